"""One day of the ETL, and many days on a process pool: plain Python the Dagster assets call.

`process_day` runs in a worker process: it finds (or downloads) the day's archive, converts it,
checks the result and draws the preview. It never raises for a bad day; it returns a `DayOutcome`
with the reason, and the log lines the parent writes (workers never write the log themselves, so
the file stays in order). `process_days` fans days out over a `ProcessPoolExecutor`; one day's
failure, even a crashed worker, does not stop the others.

This module does not import dagster (it is pickled into workers).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from ..archive import ArchiveNotFoundError, DownloadError, DownloadResult, download_archive, find_archive
from ..day_pool import run_days
from ..plots import micro_price_png, png_markdown  # noqa: F401 - png_markdown: imported from here by the assets
from ..settings import RawRootMissingError, Settings

__all__ = ["DayOutcome", "describe_failures", "locate_archive", "preflight", "process_day", "process_days"]

PREVIEW_COLUMNS = ("ts", "mid_close", "micro_price", "spread", "imbalance_1", "n_msgs", "valid_seconds")
PREVIEW_ROWS = 5
DEBUG, INFO, WARNING, ERROR = logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR


@dataclass
class DayOutcome:
    day: dt.date
    ok: bool = False
    error: str | None = None
    archive: Path | None = None
    download: DownloadResult | None = None
    summary: object | None = None  # orderbook.etl.EtlSummary
    checks: list = field(default_factory=list)  # orderbook.quality.CheckOutcome
    preview_md: str | None = None
    plot_png: bytes | None = None
    lines: list[tuple[int, str]] = field(default_factory=list)

    @property
    def blocking_failures(self) -> list:
        return [c for c in self.checks if c.failed_error and c.name in BLOCKING_CHECKS]

    @property
    def reason(self) -> str | None:
        """Why the day counts as failed: an ETL error or a failed blocking check."""
        if self.error:
            return self.error
        bad = self.blocking_failures
        if bad:
            return "; ".join(f"check {c.name} failed: {c.description}" for c in bad)
        return None


BLOCKING_CHECKS = ("no_nan_or_inf", "schema", "gaps")


def preflight(settings: Settings) -> None:
    """Fails the whole run early when the archive root is missing (a mount that is down).

    With downloads on and the default root (not set by QUANTGOD_RAW_ROOT), the root is created.
    """
    paths = settings.paths
    if not paths.raw_root.exists() and settings.etl.download.enabled and not paths.raw_root_from_env:
        paths.raw_root.mkdir(parents=True, exist_ok=True)
    paths.require_raw_root()


def locate_archive(day: dt.date, settings: Settings, *, download: bool = True) -> tuple[Path, DownloadResult | None]:
    """The day's archive under the root; downloaded first when missing and downloads are on."""
    root = settings.paths.require_raw_root()
    depths = settings.etl.depths
    found = find_archive(root, day, settings.symbol, depths)
    if found is not None:
        return found, None
    dl = settings.etl.download
    if not (download and dl.enabled):
        names = " or ".join(f"{day.isoformat()}_{settings.symbol}_ob{d}.data.zip" for d in depths)
        raise ArchiveNotFoundError(
            f"{day}: no archive {names} under {root} (searched recursively); "
            "download is off (download.enabled in etl.yaml)"
        )
    result = download_archive(day, settings.symbol, root, dl.base_url, depths=depths, timeout_s=dl.timeout_s)
    return result.path, result


def _check_lines(outcome: DayOutcome) -> None:
    for check in outcome.checks:
        if check.passed:
            continue
        level = ERROR if check.severity == "ERROR" else WARNING
        if check.name == "no_nan_or_inf":
            outcome.lines.append((level, check.description))
        elif check.name == "gaps":
            intervals = check.metadata.get("gap_intervals", [])
            shown = ", ".join(intervals[:5]) + (f" (+{len(intervals) - 5} more)" if len(intervals) > 5 else "")
            outcome.lines.append((level, f"Significant gaps: {check.description}" + (f": {shown}" if shown else "")))
        else:
            outcome.lines.append((level, f"Check {check.name} failed: {check.description}"))


def process_day(day: dt.date, settings: Settings, *, download: bool = True, plot: bool = True) -> DayOutcome:
    """Finds, converts and checks one day; never raises for a bad day (see `DayOutcome.error`)."""
    import polars as pl

    from ..orderbook.etl import OrderBookInputError, convert_day
    from ..orderbook.quality import markdown_table, run_checks
    from ..orderbook.replay import ReplayConfig

    outcome = DayOutcome(day)
    name = f"{day.isoformat()}_{settings.symbol}"
    try:
        archive, downloaded = locate_archive(day, settings, download=download)
        outcome.archive, outcome.download = archive, downloaded
        name = archive.name
        if downloaded is not None:
            outcome.lines.append((INFO, f"Downloaded: {downloaded.url} -> {archive} "
                                        f"({downloaded.bytes / 1e6:.1f} MB in {downloaded.seconds:.1f} s)"))
        outcome.lines.append((INFO, f"Processing: {name}"))
        config = ReplayConfig(max_silence_s=settings.etl.max_silence_s, skip_bad_lines=settings.etl.skip_bad_lines)
        output = settings.paths.preprocessed_path(day)
        summary = convert_day(archive, output, day=day, symbol=settings.symbol, config=config)
        outcome.summary = summary
        outcome.lines.append((INFO, f"Rows after resample: {summary.rows}"))
        outcome.lines.append((INFO, f"Saved: {output.as_posix()} ({summary.bytes_out / 1e6:.1f} MB)"))
        outcome.lines.append((INFO, f"Summary: {summary.line()}"))
        frame = pl.read_parquet(output)
        outcome.checks = run_checks(
            frame,
            warn_share=settings.etl.gap_warn_share,
            fail_share=settings.etl.gap_fail_share,
            intervals=summary.gap_intervals,
        )
        _check_lines(outcome)
        shown = [c for c in PREVIEW_COLUMNS if c in frame.columns]
        outcome.preview_md = markdown_table(frame.select(shown).head(PREVIEW_ROWS))
        if plot:
            try:
                outcome.plot_png = micro_price_png(frame, day, settings.symbol)
            except Exception as exc:  # a picture is never worth failing a day
                outcome.lines.append((WARNING, f"micro_price plot skipped: {type(exc).__name__}: {exc}"))
        outcome.ok = True
    except (OrderBookInputError, ArchiveNotFoundError, DownloadError, RawRootMissingError) as exc:
        outcome.error = str(exc)
    except Exception as exc:  # a bug, not bad input: the short reason in the run, the traceback in the file
        outcome.error = short_reason(exc)
        outcome.lines.append((DEBUG, "".join(traceback.format_exception(exc)).rstrip()))
    if outcome.error:
        outcome.lines.append((ERROR, f"Failed: {name}: {outcome.error}"))
    elif outcome.blocking_failures:
        outcome.lines.append((ERROR, f"Failed: {name}: {outcome.reason}"))
    return outcome


def short_reason(exc: BaseException, limit: int = 300) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    text = f"{type(exc).__name__}: {first}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def process_days(
    days: Sequence[dt.date],
    settings: Settings,
    *,
    on_done: Callable[[DayOutcome], None] | None = None,
    workers: int | None = None,
    download: bool = True,
) -> list[DayOutcome]:
    """Processes `days` (one in-process, several on a process pool); outcomes in `days` order."""
    outcomes: dict[dt.date, DayOutcome] = {}

    def done(day: dt.date, outcome: DayOutcome | None, exc: BaseException | None) -> None:
        if exc is not None:  # process_day catches everything: this is a worker that died
            outcome = DayOutcome(day, error=f"worker failed: {short_reason(exc)}")
            outcome.lines.append((ERROR, f"Failed: {day}: {outcome.error}"))
        outcomes[day] = outcome
        if on_done is not None:
            on_done(outcome)

    run_days(partial(process_day, settings=settings, download=download), days,
             workers or settings.etl.worker_count(len(days)), done)
    return [outcomes[d] for d in days]


def describe_failures(outcomes: Sequence[DayOutcome]) -> str:
    failed = [o for o in outcomes if o.reason]
    lines = [f"{len(failed)} of {len(outcomes)} day(s) failed:"]
    lines += [f"- {o.day}: {o.reason}" for o in failed]
    return "\n".join(lines)


def workers_note(settings: Settings, days: int) -> str:
    return f"{settings.etl.worker_count(days)} worker(s) of {os.cpu_count()} core(s)"


def check_existing(day: dt.date, settings: Settings) -> DayOutcome:
    """The checks on an already written day (a checks-only run); the gap intervals come from minutes."""
    from ..orderbook.quality import run_checks

    outcome = DayOutcome(day)
    path = settings.paths.preprocessed_path(day)
    if not path.is_file():
        outcome.error = f"{day}: {path} does not exist; materialize preprocessed_book first"
        outcome.lines.append((ERROR, f"Failed: {outcome.error}"))
        return outcome
    try:
        outcome.checks = run_checks(path, warn_share=settings.etl.gap_warn_share,
                                    fail_share=settings.etl.gap_fail_share)
    except Exception as exc:
        outcome.error = f"{path}: {type(exc).__name__}: {exc}"
        outcome.lines.append((ERROR, f"Failed: {outcome.error}"))
        return outcome
    outcome.lines.append((INFO, f"Checked: {path.as_posix()}"))
    _check_lines(outcome)
    outcome.ok = True
    return outcome
