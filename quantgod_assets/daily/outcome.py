"""One day's result of a daily stage, as plain data the Dagster layer reports without reshaping.

A stage never raises for a bad day: it returns a `DayOutcome` whose `reason` says why the day
failed (an error, or a blocking check that failed). Metadata values are plain Python; the few kinds
a person reads differently are marked with `FilePath`, `Url` and `Markdown`, which the reporter
turns into the matching Dagster metadata values.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..orderbook.quality import CheckOutcome
from ..storage import remove_stale_temps, writer_prefix

__all__ = [
    "CheckOutcome", "DayOutcome", "FilePath", "Markdown", "Url", "describe_failures", "publish", "short_reason",
    "staging_path",
]


class FilePath(str):
    """A metadata value that is a local path."""


class Url(str):
    """A metadata value that is a URL."""


class Markdown(str):
    """A metadata value shown as Markdown (tables, inline pictures)."""

    @property
    def picture(self) -> tuple[str, bytes] | None:
        """(alt text, PNG bytes) when the whole text is one `plots.png_markdown` picture (a data:
        URI, which Dagster shows only behind "[Show Markdown]"), else None."""
        import base64
        import re

        found = re.fullmatch(r"!\[([^\]]*)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", self.strip())
        return (found.group(1), base64.b64decode(found.group(2))) if found else None


@dataclass
class DayOutcome:
    day: dt.date
    error: str | None = None  # the day could not be produced (bad input, missing file, a bug)
    path: Path | None = None  # the day's output
    checks: list[CheckOutcome] = field(default_factory=list)
    blocking: tuple[str, ...] = ()  # names of the checks whose failure fails the day
    metadata: dict[str, Any] = field(default_factory=dict)  # the materialization's, plain values
    stats: dict[str, Any] = field(default_factory=dict)  # the stage's own numbers for its run summary
    rejected: Path | None = None  # an output that failed a blocking check, kept for inspection
    lines: list[tuple[int, str]] = field(default_factory=list)  # (logging level, line) for the run log

    @property
    def produced(self) -> bool:
        """The day's output was made and checked (its blocking checks may still have failed)."""
        return self.error is None

    @property
    def published(self) -> bool:
        """The day's output replaced the previous one: made, and every blocking check passed."""
        return self.error is None and not self.blocking_failures

    @property
    def blocking_failures(self) -> list[CheckOutcome]:
        return [c for c in self.checks if c.failed_error and c.name in self.blocking]

    @property
    def reason(self) -> str | None:
        """Why the day counts as failed: an error or a failed blocking check; None when it succeeded."""
        if self.error:
            return self.error
        bad = self.blocking_failures
        if not bad:
            return None
        kept = f" (rejected output: {self.rejected})" if self.rejected else ""
        return "; ".join(f"check {c.name} failed: {c.description}" for c in bad) + kept

    def log(self, level: int, line: str) -> None:
        self.lines.append((level, line))

    def fail(self, error: str, where: str | None = None) -> DayOutcome:
        """Marks the day failed with `error` and logs `Failed: {where}: {error}` (`where`: a file name)."""
        self.error = error
        self.log(logging.ERROR, f"Failed: {where}: {error}" if where else f"Failed: {error}")
        return self


def staging_path(final: Path) -> Path:
    """A new name beside `final` (same file system: the rename is atomic; hidden, and no `*.parquet`
    glob matches it) where the day's output is written and checked before it may replace `final`.

    Unique to this writer, so two runs of one day never check each other's bytes; what killed
    writes of `final` left there is removed first.
    """
    remove_stale_temps(final)
    return final.with_name(f"{writer_prefix(final)}{uuid.uuid4().hex[:8]}.staged")


def publish(outcome: DayOutcome, staged: Path, final: Path) -> None:
    """Renames `staged` over `final` when the day passed its blocking checks, else moves it to
    `rejected/` beside `final` (for inspection; out of the outputs' `*.parquet` globs).

    So a day that fails a blocking check never replaces the good file a previous run wrote.
    """
    if outcome.published:
        os.replace(staged, final)
        outcome.path = final
        rejected_path(final).unlink(missing_ok=True)  # an older rejection no longer says anything
        return
    outcome.rejected = rejected_path(final)
    outcome.rejected.parent.mkdir(exist_ok=True)
    os.replace(staged, outcome.rejected)
    kept = "the previous file is kept" if final.exists() else "no file was published"
    outcome.log(logging.WARNING, f"Not published: {final.as_posix()} ({kept}); "
                                 f"the rejected output is {outcome.rejected.as_posix()}")


def rejected_path(final: Path) -> Path:
    return final.parent / "rejected" / final.name


def short_reason(exc: BaseException, limit: int = 300) -> str:
    """`Type: first line` of an unexpected exception, cut to `limit` characters."""
    first = (str(exc).strip().splitlines() or [""])[0]
    text = f"{type(exc).__name__}: {first}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_failures(outcomes: Sequence[DayOutcome]) -> str:
    """`N of M day(s) failed:` and one `- day: reason` line per failed day."""
    failed = [o for o in outcomes if o.reason]
    return "\n".join([f"{len(failed)} of {len(outcomes)} day(s) failed:", *[f"- {o.day}: {o.reason}" for o in failed]])
