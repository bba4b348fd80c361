"""The labels stage's day: label it from its book and the next day's, check its class balance.

`produce_day` runs in a pool worker for `labelled_frame` (it imports polars, never dagster);
`check_day` reads a day already labelled (a checks-only run).
"""

from __future__ import annotations

import datetime as dt
from logging import ERROR, INFO, WARNING
from pathlib import Path
from typing import Any

from ..labelling import (
    CLASS_NAMES,
    class_balance_problems,
    class_distribution,
    distribution_line,
    label_day_files,
    labelled_day_path,
)
from ..orderbook.quality import ERROR as SEVERE
from ..orderbook.quality import WARN, CheckOutcome
from ..settings import LabellingSettings, Settings
from .outcome import DayOutcome, FilePath, publish, short_reason, staging_path

__all__ = ["CLASS_BALANCE", "check_day", "produce_day"]

CLASS_BALANCE = "class_balance"


def balance_check(dist: dict[str, Any], rows: int, min_share: float) -> CheckOutcome:
    """Every class present among the labelled rows (else ERROR); WARN when one is under `min_share`."""
    missing, rare = class_balance_problems(dist, min_share)
    if missing:
        description = (f"no labelled rows ({rows} rows, all with a null target)" if not dist["labelled"]
                       else f"class(es) {', '.join(missing)} absent from {dist['labelled']} labelled rows")
    elif rare:
        shares = ", ".join(f"{name} {100 * dist['shares'][name]:.2f}%" for name in rare)
        description = f"rare class(es) (under {100 * min_share:g}%): {shares}"
    else:
        description = "all classes present: " + ", ".join(
            f"{name} {100 * dist['shares'][name]:.1f}%" for name in CLASS_NAMES)
    return CheckOutcome(
        name=CLASS_BALANCE,
        passed=not missing and not rare,
        severity=SEVERE if missing else WARN,
        description=description,
        metadata={**class_metadata(dist), "labelled_rows": dist["labelled"], "unlabelled_rows": dist["unlabelled"],
                  "missing_classes": missing, "rare_classes": rare, "min_class_share": min_share},
    )


def class_metadata(dist: dict[str, Any]) -> dict[str, Any]:
    """`sell_count`, `sell_share`, ... and the `counts` and `shares` mappings of a distribution."""
    out: dict[str, Any] = {}
    for name in CLASS_NAMES:
        out[f"{name.lower()}_count"] = dist["counts"][name]
        out[f"{name.lower()}_share"] = round(dist["shares"][name], 6)
    out["counts"] = dict(dist["counts"])
    out["shares"] = {k: round(v, 6) for k, v in dist["shares"].items()}
    return out


def _read_day(outcome: DayOutcome, path: Path, lab: LabellingSettings, final: Path) -> None:
    """Counts and checks a labelled day file (only `target` and the file's metadata are read)."""
    import polars as pl
    import pyarrow.parquet as pq

    targets = pl.read_parquet(path, columns=["target"])["target"]
    dist = class_distribution(targets)
    meta = pq.read_schema(path).metadata or {}
    next_day_present = meta.get(b"quantgod.label.next_day") == b"present"
    outcome.path = final
    outcome.stats = {"distribution": dist}
    outcome.checks = [balance_check(dist, targets.len(), lab.min_class_share)]
    outcome.metadata = {
        "path": FilePath(final.resolve()),
        "dagster/row_count": targets.len(),
        "rows": targets.len(),
        "labelled_rows": dist["labelled"],
        "unlabelled_rows": dist["unlabelled"],
        **class_metadata(dist),
        "distribution": distribution_line(f"{outcome.day}.parquet", dist),
        "next_day_present": next_day_present,
        "suffix": lab.suffix,
        "lookahead": lab.lookahead,
        "threshold_short": lab.threshold_short,
        "threshold_long": lab.threshold_long,
        "price_column": lab.price_column,
    }
    name = f"{outcome.day}.parquet"
    outcome.log(INFO, distribution_line(name, dist))
    if not next_day_present:
        following = outcome.day + dt.timedelta(days=1)
        outcome.log(INFO, f"{name}: no preprocessed {following} yet, the last {lab.lookahead} minutes stay "
                          f"unlabelled (materialize {outcome.day} again once it exists)")
    [check] = outcome.checks
    if outcome.blocking_failures:
        outcome.log(ERROR, f"Failed: {name}: {outcome.reason}")
    elif not check.passed:
        outcome.log(WARNING, f"Class balance {name}: {check.description}")


def _finish(outcome: DayOutcome, path: Path, lab: LabellingSettings, final: Path) -> DayOutcome:
    try:
        _read_day(outcome, path, lab, final)
    except Exception as exc:
        return outcome.fail(f"reading {path}: {short_reason(exc)}", f"{outcome.day}.parquet")
    return outcome


def produce_day(day: dt.date, settings: Settings) -> DayOutcome:
    """Labels one day (the tail from D+1's book when it exists); never raises for a bad day."""
    lab = settings.labelling
    outcome = DayOutcome(day, blocking=(CLASS_BALANCE,))
    final = labelled_day_path(settings.paths.labelled_dir, lab.suffix, day)
    try:
        # written beside the day's file first: published only once the blocking check passed
        staged = label_day_files(settings.paths.preprocessed_dir, settings.paths.labelled_dir, day,
                                 lookahead=lab.lookahead, threshold_short=lab.threshold_short,
                                 threshold_long=lab.threshold_long, price_column=lab.price_column,
                                 output=staging_path(final))
    except FileNotFoundError as exc:
        return outcome.fail(f"{exc}; materialize preprocessed_book first", f"{day}.parquet")
    except ValueError as exc:
        return outcome.fail(str(exc), f"{day}.parquet")
    except Exception as exc:
        return outcome.fail(short_reason(exc), f"{day}.parquet")
    try:
        _finish(outcome, staged, lab, final)
        if outcome.produced:
            publish(outcome, staged, final)
    except OSError as exc:  # the rename or the move aside (a full or read-only disk)
        outcome.fail(f"publishing {final}: {short_reason(exc)}", f"{day}.parquet")
    finally:
        staged.unlink(missing_ok=True)  # still there only when it was neither published nor rejected
    return outcome


def check_day(day: dt.date, settings: Settings) -> DayOutcome:
    """The class-balance check on an already labelled day (a checks-only run)."""
    lab = settings.labelling
    outcome = DayOutcome(day, blocking=(CLASS_BALANCE,))
    path = labelled_day_path(settings.paths.labelled_dir, lab.suffix, day)
    if not path.is_file():
        return outcome.fail(f"{path} does not exist; materialize labelled_frame first", f"{day}.parquet")
    return _finish(outcome, path, lab, path)
