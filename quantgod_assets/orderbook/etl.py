"""One day's file in, one Parquet of 1440 one-minute rows out, written atomically."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..storage import write_parquet_atomic
from .quality import SnapshotAgreement
from .reader import OrderBookInputError
from .replay import DayReplay, ReplayConfig, replay_file
from .sampling import minute_frame

__all__ = [
    "EtlSummary",
    "OrderBookInputError",
    "check_paths",
    "convert_day",
    "gap_intervals",
    "parse_archive_name",
]

ARCHIVE_NAME = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})_(?P<symbol>[A-Z0-9]+)(?:_(?!ob\d)[a-z]+)?(?:_ob(?P<depth>\d+))?"
)
MIN_REPORTED_GAP_S = 60
DEFAULT_REPLAY_CONFIG = ReplayConfig()  # frozen, so one default shared by every call is safe


def parse_archive_name(path: str | Path) -> tuple[dt.date, str, int]:
    """(date, symbol, depth) from `2025-03-14_BTCUSDT_ob200.data.zip`; depth 0 when absent."""
    name = Path(path).name
    match = ARCHIVE_NAME.match(name)
    if match is None:
        raise OrderBookInputError(
            f"{path}: the file name carries no date and symbol "
            "(expected like 2025-03-14_BTCUSDT_ob200.data.zip); pass --date and --symbol"
        )
    try:
        day = dt.date.fromisoformat(match["date"])
    except ValueError as exc:
        raise OrderBookInputError(f"{path}: {match['date']!r} in the file name is not a date") from exc
    return day, match["symbol"], int(match["depth"] or 0)


def gap_intervals(second_valid: np.ndarray, min_seconds: int = MIN_REPORTED_GAP_S) -> list[tuple[str, str]]:
    """Runs of at least `min_seconds` invalid seconds, as ("HH:MM:SS", "HH:MM:SS") end-exclusive."""
    invalid = np.concatenate([[False], ~second_valid.astype(bool), [False]])
    edges = np.flatnonzero(np.diff(invalid.astype(np.int8)))
    starts, stops = edges[::2], edges[1::2]

    def clock(second: int) -> str:
        return f"{second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d}"

    return [(clock(a), clock(b)) for a, b in zip(starts, stops) if b - a >= min_seconds]


@dataclass
class EtlSummary:
    source: Path
    output: Path
    day: dt.date
    symbol: str
    source_depth: int
    rows: int
    bytes_in: int  # decompressed bytes replayed
    bytes_out: int
    seconds: float
    counts: dict[str, int]
    valid_share: float
    gap_intervals: list[tuple[str, str]] = field(default_factory=list)
    snapshots: SnapshotAgreement | None = None  # the book against Bybit's snapshots (counts also in `counts`)

    @property
    def mb_per_s(self) -> float:
        return self.bytes_in / 1e6 / self.seconds if self.seconds > 0 else float("inf")

    def _snapshot_text(self) -> str:
        c = self.counts
        compared = c.get("snapshots_compared", 0)
        return f"snapshots agree {compared - c.get('snapshots_disagreeing', 0)}/{compared}"

    def line(self) -> str:
        c = self.counts
        return (
            f"{self.day} {self.symbol} ob{self.source_depth}: {self.rows} rows -> {self.output} "
            f"({self.bytes_out / 1e6:.1f} MB) | {c['n_messages']:,} msgs, {c['n_snapshots']} snapshots, "
            f"{c['seq_gaps']} gaps, {c['crossed_messages']} crossed, {c['bad_lines']} bad lines, "
            f"{self._snapshot_text()} | "
            f"valid {self.valid_share:.1%} | {self.seconds:.2f} s, {self.mb_per_s:.0f} MB/s"
        )


def parquet_metadata(replay: DayReplay, symbol: str, source: Path) -> dict[str, str]:
    return {
        "quantgod.symbol": symbol,
        "quantgod.source_depth": str(replay.source_depth),
        "quantgod.source_file": source.name,
        "quantgod.date": replay.day.isoformat(),
        "quantgod.counts": json.dumps(replay.counts),
        "quantgod.valid_share": f"{replay.valid_share:.6f}",
        **replay.snapshots.parquet_metadata(),  # quantgod.snapshots.{compared,agreeing,...,first_disagreement}
    }


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)  # a hard link, or one file by two routes
    except OSError:  # one of them does not exist (yet)
        return False


def check_paths(input_path: str | Path, output_path: str | Path) -> None:
    """Refuses, before any work, an input that is not a file and an output that would replace
    the input or cannot be a file: OrderBookInputError naming the path."""
    source, output = Path(input_path), Path(output_path)
    if source.is_dir():
        raise OrderBookInputError(f"{source}: is a folder, not a day's file (.data.zip, .jsonl.gz or JSON lines)")
    if not source.exists():
        raise OrderBookInputError(f"{source}: no such file")
    if _same_file(source, output):
        raise OrderBookInputError(
            f"{output}: is the input file; the output must be another file (writing it would replace the input)"
        )
    if output.is_dir():
        raise OrderBookInputError(f"{output}: is a folder; the output names the Parquet file to write")
    if output.exists() and not output.is_file():
        raise OrderBookInputError(f"{output}: is not a regular file (a device, pipe or socket); "
                                  "the output names the Parquet file to write")
    for parent in output.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OrderBookInputError(f"{output}: {parent} is not a folder")
            break


def convert_day(
    input_path: str | Path,
    output_path: str | Path,
    *,
    day: dt.date | None = None,
    symbol: str | None = None,
    config: ReplayConfig = DEFAULT_REPLAY_CONFIG,
) -> EtlSummary:
    """Replays one day's file and writes its 1440 one-minute rows to `output_path` (Parquet, zstd).

    An output that is the input, a folder or no regular file is refused before any work (`check_paths`).
    """
    source, output = Path(input_path), Path(output_path)
    check_paths(source, output)
    if day is None:
        day, name_symbol, _ = parse_archive_name(source)
        symbol = symbol or name_symbol
    elif symbol is None and ARCHIVE_NAME.match(source.name):
        symbol = parse_archive_name(source)[1]
    started = time.perf_counter()
    # the name (or the caller) says which market and day the file holds; its messages must agree:
    # another symbol, or a day most messages lie outside of, fails naming both
    replay = replay_file(source, day, config, symbol=symbol, check_day=True)
    frame = minute_frame(replay)
    symbol = symbol or replay.symbol
    bytes_out = write_parquet_atomic(frame, output, parquet_metadata(replay, symbol, source))
    return EtlSummary(
        source=source,
        output=output,
        day=day,
        symbol=symbol,
        source_depth=replay.source_depth,
        rows=frame.height,
        bytes_in=replay.bytes_read,
        bytes_out=bytes_out,
        seconds=time.perf_counter() - started,
        counts=replay.counts,
        valid_share=replay.valid_share,
        gap_intervals=gap_intervals(replay.second_valid),
        snapshots=replay.snapshots,
    )
