"""The book stage's day: find (or download) the archive, convert it, check the 1440 rows.

`produce_day` runs in a pool worker for `preprocessed_book`; `check_day` reads a day already
written (a checks-only run); `find_day` is `raw_zip`'s day (locate or download, no conversion).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import traceback
from collections.abc import Collection
from logging import DEBUG, ERROR, INFO, WARNING
from pathlib import Path
from typing import Any

from ..archive import (
    ArchiveNotFoundError,
    CorruptArchiveError,
    DownloadError,
    DownloadResult,
    InvalidSymbolError,
    download_archive,
    find_archive,
    quarantine_archive,
    verify_archive,
)
from ..orderbook.quality import CheckOutcome
from ..plots import micro_price_png, png_markdown
from ..settings import RawRootMissingError, Settings
from .outcome import DayOutcome, FilePath, Markdown, Url, publish, short_reason, staging_path

__all__ = ["BLOCKING_CHECKS", "LegacyLayoutError", "check_day", "find_day", "locate_archive", "preflight",
           "produce_day", "require_migrated"]

BLOCKING_CHECKS = ("no_nan_or_inf", "schema", "gaps")
PREVIEW_COLUMNS = ("ts", "mid_close", "micro_price", "spread", "imbalance_1", "n_msgs", "valid_seconds")
PREVIEW_ROWS = 5


def preflight(settings: Settings) -> None:
    """Fails the whole run early when the archive root is missing (a mount that is down).

    With downloads on and the default root (not set by QUANTGOD_RAW_ROOT), the root is created.
    """
    paths = settings.paths
    if not paths.raw_root.exists() and settings.etl.download.enabled and not paths.raw_root_from_env:
        paths.raw_root.mkdir(parents=True, exist_ok=True)
    paths.require_raw_root()
    require_migrated(settings)


class LegacyLayoutError(RuntimeError):
    """Books written before instruments lie in the old folder: `quantgod migrate` moves them."""


def require_migrated(settings: Settings) -> None:
    """Fails when `{data_dir}/L2/pre_processed/` (the one-symbol layout) still holds days: they
    would otherwise be produced again, silently, under the instrument's folder."""
    legacy = settings.paths.legacy_preprocessed_dir
    days = sorted(legacy.glob("????-??-??.parquet")) if legacy.is_dir() else []
    if days:
        raise LegacyLayoutError(
            f"{legacy} holds {len(days)} day(s) written before instruments "
            f"({days[0].stem}..{days[-1].stem}): run `quantgod migrate` to move them to "
            f"{{data_dir}}/L2/{{category}}/{{SYMBOL}}/ (nothing is reprocessed)"
        )


def locate_archive(
    day: dt.date, settings: Settings, *, download: bool = True, exclude: Collection[Path] = ()
) -> tuple[Path, DownloadResult | None]:
    """The day's archive under the root; downloaded first when missing and downloads are on.

    `exclude`: archives on disk already found corrupt (passed over; the other depth is used)."""
    root = settings.paths.require_raw_root()
    depths = settings.etl.depths
    first = settings.instrument.first_day
    if first is not None and day < first:
        raise ArchiveNotFoundError(f"{day}: before {settings.instrument}'s first day {first} "
                                   "(instruments: first_day in etl.yaml)")
    category = settings.instrument.category
    found = find_archive(root, day, settings.symbol, depths, exclude=exclude, category=category)
    if found is not None:
        return found, None
    dl = settings.etl.download
    if not (download and dl.enabled):
        names = " or ".join(f"{day.isoformat()}_{settings.symbol}_ob{d}.data.zip" for d in depths)
        corrupt = f" ({len(exclude)} found corrupt)" if exclude else ""
        where = root if category == "linear" else root / category
        raise ArchiveNotFoundError(
            f"{day}: no usable {category} archive {names} under {where} (searched recursively){corrupt}; "
            "download is off (download.enabled in etl.yaml)"
        )
    result = download_archive(day, settings.symbol, root, dl.base_url, depths=depths, timeout_s=dl.timeout_s,
                              deadline_s=dl.deadline_s, max_bytes=dl.max_bytes, category=category)
    return result.path, result


def corrupt_reason(archive: Path, exc: Exception) -> str | None:
    """Why `archive` is corrupt, when the conversion's `exc` comes from a corrupt file; else None.

    The reader's own words (corrupt / truncated / bad CRC) say so at once; any other input error
    (a malformed number: flipped bytes inflate to garbage before the CRC is reached) is checked
    by inflating the member to the end (`verify_archive`)."""
    text = str(exc)
    if any(word in text.replace(str(archive), "").lower() for word in ("corrupt", "truncated", "bad crc-32")):
        return text
    try:
        verify_archive(archive)
    except CorruptArchiveError as corrupt:
        return str(corrupt)
    except (OSError, ValueError):
        return None
    return None


def archive_depth(path: Path) -> int:
    """200 from `2025-03-14_BTCUSDT_ob200.data.zip`."""
    return int(path.name.rsplit("_ob", 1)[1].split(".", 1)[0])


def find_day(day: dt.date, settings: Settings) -> DayOutcome:
    """`raw_zip`'s day: the archive's path, size and depth, downloaded first when missing."""
    outcome = DayOutcome(day)
    try:
        path, downloaded = locate_archive(day, settings)
    except (OSError, ValueError) as exc:
        return outcome.fail(str(exc), str(day))
    size = path.stat().st_size
    outcome.path = path
    outcome.metadata = {"path": FilePath(path), "size": size, "size_mb": round(size / 1e6, 1),
                        "depth": archive_depth(path)}
    if downloaded is not None:
        outcome.metadata["downloaded_from"] = Url(downloaded.url)
        outcome.log(INFO, f"Downloaded: {downloaded.url} -> {path} ({downloaded.bytes / 1e6:.1f} MB)")
    else:
        outcome.log(INFO, f"Found: {path} ({size / 1e6:.1f} MB, ob{archive_depth(path)})")
    return outcome


def _check_lines(outcome: DayOutcome) -> None:
    for check in outcome.checks:
        if check.passed:
            continue
        level = ERROR if check.severity == "ERROR" else WARNING
        if check.name == "no_nan_or_inf":
            outcome.log(level, check.description)
        elif check.name == "gaps":
            intervals = check.metadata.get("gap_intervals", [])
            shown = ", ".join(intervals[:5]) + (f" (+{len(intervals) - 5} more)" if len(intervals) > 5 else "")
            outcome.log(level, f"Significant gaps: {check.description}" + (f": {shown}" if shown else ""))
        elif check.name == "snapshot_agreement":
            outcome.log(level, f"Snapshots: {check.description}")
        else:
            outcome.log(level, f"Check {check.name} failed: {check.description}")


def _summary_metadata(summary: Any, output: Path, archive: Path, download: DownloadResult | None) -> dict[str, Any]:
    """The materialization's metadata from the conversion's `EtlSummary`."""
    counts = dict(summary.counts)
    metadata: dict[str, Any] = {
        "path": FilePath(output.resolve()),
        "archive": FilePath(archive),
        "dagster/row_count": summary.rows,
        "rows": summary.rows,
        "bytes": summary.bytes_out,
        "bytes_in": summary.bytes_in,
        "mb_per_s": round(summary.mb_per_s, 1),
        "seconds": round(summary.seconds, 2),
        "source_depth": summary.source_depth,
        "valid_share": round(summary.valid_share, 6),
        "messages": counts.get("n_messages", 0),
        "snapshots": counts.get("n_snapshots", 0),
        "sequence_gaps": counts.get("seq_gaps", 0),
        "crossed_messages": counts.get("crossed_messages", 0),
        "bad_lines": counts.get("bad_lines", 0),
        "counts": counts,
        "gap_intervals": [f"{a}-{b}" for a, b in summary.gap_intervals[:100]],
    }
    snapshots = getattr(summary, "snapshots", None)
    if snapshots is not None:  # the book against Bybit's snapshots: counts and the first disagreement
        for key, value in snapshots.summary().items():
            if value is not None:
                metadata[key] = value
    if download is not None:
        metadata["downloaded_from"] = Url(download.url)
    return metadata


def _preview(outcome: DayOutcome, frame: Any, settings: Settings, plot: bool) -> None:
    from ..orderbook.quality import markdown_table

    shown = [c for c in PREVIEW_COLUMNS if c in frame.columns]
    outcome.metadata["preview"] = Markdown(markdown_table(frame.select(shown).head(PREVIEW_ROWS)))
    if not plot:
        return
    try:
        png = micro_price_png(frame, outcome.day, settings.symbol)
    except Exception as exc:  # a picture is never worth failing a day
        outcome.log(WARNING, f"micro_price plot skipped: {type(exc).__name__}: {exc}")
        return
    if png:
        outcome.metadata["micro_price"] = Markdown(png_markdown(png))


MAX_CORRUPT = 4  # archives set aside for one day at most (each depth on disk, then a download)


def _set_aside(outcome: DayOutcome, archive: Path, reason: str, settings: Settings, *, download: bool) -> None:
    """A corrupt archive on disk: moved to `{root}/corrupt/` when it can be fetched again (downloads
    on), else left where it is and passed over; the next try is the other depth, or a download."""
    fetch = download and settings.etl.download.enabled
    if fetch:
        moved = quarantine_archive(archive, settings.paths.raw_root)
        where = f"moved to {moved}"
    else:
        where = "left in place (download is off)"
    outcome.log(WARNING, f"Corrupt archive: {archive}: {reason}; {where}; trying another depth"
                         + (" or a fresh download" if fetch else ""))


def produce_day(day: dt.date, settings: Settings, *, download: bool = True, plot: bool = True) -> DayOutcome:
    """Finds, converts and checks one day; never raises for a bad day (see `DayOutcome.reason`)."""
    import polars as pl

    from ..orderbook.etl import OrderBookInputError, convert_day
    from ..orderbook.quality import run_checks
    from ..orderbook.replay import ReplayConfig

    outcome = DayOutcome(day, blocking=BLOCKING_CHECKS)
    name = f"{day.isoformat()}_{settings.symbol}"
    staged: Path | None = None
    try:
        config = ReplayConfig(max_silence_s=settings.etl.max_silence_s, skip_bad_lines=settings.etl.skip_bad_lines,
                              max_line_bytes=settings.etl.max_line_bytes)
        output = settings.paths.preprocessed_path(day)
        staged = staging_path(output)
        corrupt: list[Path] = []  # archives on disk found corrupt this time (passed over when kept in place)
        first_error: OrderBookInputError | None = None
        while True:
            try:
                archive, downloaded = locate_archive(day, settings, download=download, exclude=corrupt)
            except (ArchiveNotFoundError, DownloadError) as exc:
                if first_error is None:
                    raise
                if isinstance(exc, ArchiveNotFoundError) and not (download and settings.etl.download.enabled):
                    raise first_error from None  # nothing else on disk: the corruption is the day's reason
                raise type(exc)(f"{first_error}; then: {exc}") from exc
            name = archive.name
            if downloaded is not None:
                outcome.log(INFO, f"Downloaded: {downloaded.url} -> {archive} "
                                  f"({downloaded.bytes / 1e6:.1f} MB in {downloaded.seconds:.1f} s)")
            if corrupt and archive_depth(archive) != archive_depth(corrupt[0]):
                outcome.log(WARNING, f"Fallback: converting {day} from {name} (ob{archive_depth(archive)}): "
                                     f"the preferred {corrupt[0].name} is corrupt")
            outcome.log(INFO, f"Processing: {name}")
            try:
                summary = convert_day(archive, staged, day=day, symbol=settings.symbol, config=config)
                break
            except OrderBookInputError as exc:
                reason = corrupt_reason(archive, exc)
                if reason is None or downloaded is not None or len(corrupt) >= MAX_CORRUPT:
                    raise  # bad content in a sound file, or a verified download: nothing to retry
                corrupt.append(archive)
                first_error = first_error or exc
                _set_aside(outcome, archive, reason, settings, download=download)
        outcome.log(INFO, f"Rows after resample: {summary.rows}")
        frame = pl.read_parquet(staged)
        outcome.checks = run_checks(frame, warn_share=settings.etl.gap_warn_share,
                                    fail_share=settings.etl.gap_fail_share, intervals=summary.gap_intervals,
                                    snapshots=summary.snapshots)
        _check_lines(outcome)
        summary = dataclasses.replace(summary, output=output)
        outcome.metadata = _summary_metadata(summary, output, archive, downloaded)
        _preview(outcome, frame, settings, plot)
        publish(outcome, staged, output)  # last: nothing after it can fail the day it published
        if outcome.published:
            outcome.log(INFO, f"Saved: {output.as_posix()} ({summary.bytes_out / 1e6:.1f} MB)")
        outcome.log(INFO, f"Summary: {summary.line()}")
    except (OrderBookInputError, ArchiveNotFoundError, DownloadError, RawRootMissingError,
            InvalidSymbolError) as exc:
        return outcome.fail(str(exc), name)
    except Exception as exc:  # a bug, not bad input: the short reason in the run, the traceback in the file
        outcome.log(DEBUG, "".join(traceback.format_exception(exc)).rstrip())
        return outcome.fail(short_reason(exc), name)
    finally:
        if staged is not None:
            staged.unlink(missing_ok=True)  # still there only when the day failed before publish
    if outcome.blocking_failures:
        outcome.log(ERROR, f"Failed: {name}: {outcome.reason}")
    return outcome


def check_day(day: dt.date, settings: Settings) -> DayOutcome:
    """The checks on an already written day (a checks-only run); the gap intervals come from minutes,
    the snapshot comparison from the file's `quantgod.snapshots.*` metadata."""
    from ..orderbook.quality import run_checks

    outcome = DayOutcome(day, blocking=BLOCKING_CHECKS)
    path = settings.paths.preprocessed_path(day)
    if not path.is_file():
        return outcome.fail(f"{day}: {path} does not exist; materialize preprocessed_book first")
    try:
        checks: list[CheckOutcome] = run_checks(path, warn_share=settings.etl.gap_warn_share,
                                                fail_share=settings.etl.gap_fail_share)
    except Exception as exc:
        return outcome.fail(f"{path}: {short_reason(exc)}")
    outcome.path, outcome.checks = path, checks
    outcome.log(INFO, f"Checked: {path.as_posix()}")
    _check_lines(outcome)
    return outcome
