"""What the archive sensor asks for, decided from the files alone (no Dagster here).

- `new_days`: archive days on the mount that have no preprocessed book recorded yet, newest
  first, at most `limit` a tick (a years-old archive is a backfill, not a tick).
- `days_to_relabel`: labelled days whose last `lookahead` minutes are still null because the
  next day's book was missing when they were labelled, and whose next day's book now exists
  (the labelled file's `quantgod.label.next_day` metadata says which).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable
from pathlib import Path

from .labelling import labelled_day_path

__all__ = ["days_to_relabel", "new_days"]

ONE_DAY = dt.timedelta(days=1)


def new_days(archive: Iterable[dt.date], done: Collection[dt.date], start: dt.date, limit: int) -> list[dt.date]:
    """Archive days from `start` on that are not `done`, newest first, at most `limit`."""
    waiting = sorted((day for day in archive if day >= start and day not in done), reverse=True)
    return waiting[:limit]


def _labelled_without_next_day(path: Path) -> bool:
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, ValueError):
        return False  # unreadable: the labels asset's own run will say why, not the sensor
    return meta.get(b"quantgod.label.next_day") != b"present"


def days_to_relabel(days: Iterable[dt.date], labelled_dir: Path, suffix: str, preprocessed_dir: Path) -> list[dt.date]:
    """Days D - 1 labelled without their next day whose next day D now has a preprocessed book."""
    out = []
    for day in days:
        before = labelled_day_path(labelled_dir, suffix, day - ONE_DAY)
        if (preprocessed_dir / f"{day.isoformat()}.parquet").is_file() and before.is_file() \
                and _labelled_without_next_day(before):
            out.append(day - ONE_DAY)
    return sorted(out)
