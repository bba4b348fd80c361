"""Replay one day of Bybit order-book messages into per-second samples and one-minute books.

The Python side only moves chunks: every line is parsed and applied by the numba kernel in
`_kernel.py`, so the cost per line is compiled code, not the interpreter.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import _kernel as k
from .reader import OrderBookInputError, iter_chunks, prefetched
from .schema import IMBALANCE_DEPTHS, MINUTES_PER_DAY, OUT_LEVELS, SECONDS_PER_DAY

BOOK_CAPACITY = 4096  # levels a side kept while replaying: far above the 500 of the deepest files
MESSAGE_CAPACITY = 16384  # levels a side in one message

__all__ = ["DayReplay", "OrderBookInputError", "ReplayConfig", "day_start_ms", "replay_file", "replay_stream"]


@dataclass(frozen=True)
class ReplayConfig:
    max_silence_s: float = 60.0
    out_levels: int = OUT_LEVELS
    skip_bad_lines: bool = False
    capture_seconds: int = 0  # tests: keep the top levels of every sample k < capture_seconds
    book_capacity: int = BOOK_CAPACITY  # levels a side; past it the deepest level gives way

    def __post_init__(self) -> None:
        if not 1 <= self.out_levels <= self.book_capacity:
            raise ValueError(f"out_levels must be in 1..{self.book_capacity}, got {self.out_levels}")
        if self.max_silence_s < 0:
            raise ValueError(f"max_silence_s must be >= 0, got {self.max_silence_s}")
        if not 0 <= self.capture_seconds <= SECONDS_PER_DAY:
            raise ValueError(f"capture_seconds must be in 0..{SECONDS_PER_DAY}")


@dataclass
class DayReplay:
    """What a day's replay yields; `sampling.minute_frame` turns it into the 1440-row frame."""

    day: dt.date
    day_start_ms: int
    source_name: str
    source_depth: int
    symbol: str
    bytes_read: int
    counts: dict[str, int]
    second_valid: np.ndarray  # bool[86400]
    second_mid: np.ndarray  # float64[86400], NaN where invalid
    second_micro: np.ndarray
    second_spread: np.ndarray
    minute_levels: np.ndarray  # float64[1440, 4, out_levels]: bid_px, bid_sz, ask_px, ask_sz
    minute_imbalance: np.ndarray  # float64[1440, len(IMBALANCE_DEPTHS)]
    minute_msgs: np.ndarray  # int64[1440]
    captured: np.ndarray | None = field(default=None, repr=False)  # float64[capture, 4, out_levels]

    @property
    def valid_share(self) -> float:
        return float(self.second_valid.mean())


def day_start_ms(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp() * 1000)


class _Replayer:
    """The typed arrays the kernel works on, fed chunk by chunk."""

    def __init__(self, day: dt.date, config: ReplayConfig) -> None:
        start = day_start_ms(day)
        levels = config.out_levels
        self.params = np.zeros(k.PARAMS_SIZE, dtype=np.int64)
        self.params[k.P_DAY_START] = start
        self.params[k.P_DAY_END] = start + SECONDS_PER_DAY * 1000
        self.params[k.P_MAX_SILENCE_MS] = int(round(config.max_silence_s * 1000))
        self.params[k.P_OUT_LEVELS] = levels
        self.params[k.P_CAPTURE_SECONDS] = config.capture_seconds
        self.params[k.P_SKIP_BAD_LINES] = int(config.skip_bad_lines)
        self.params[k.P_MAX_LEVELS] = config.book_capacity
        self.state = np.zeros(k.STATE_SIZE, dtype=np.int64)
        self.counts = np.zeros(len(k.COUNT_NAMES), dtype=np.int64)
        # twice the capacity: each side sits in the middle with room to grow at both ends
        self.book_keys = np.zeros((2, 2 * config.book_capacity + 2), dtype=np.float64)
        self.book_sizes = np.zeros((2, 2 * config.book_capacity + 2), dtype=np.float64)
        k.clear_book(self.state, self.book_keys)
        self.scratch_px = np.zeros((2, MESSAGE_CAPACITY), dtype=np.float64)
        self.scratch_sz = np.zeros((2, MESSAGE_CAPACITY), dtype=np.float64)
        self.symbol = np.zeros(64, dtype=np.uint8)
        self.second_valid = np.zeros(SECONDS_PER_DAY, dtype=np.uint8)
        self.second_stats = np.full((3, SECONDS_PER_DAY), np.nan)
        self.minute_levels = np.full((MINUTES_PER_DAY, 4, levels), np.nan)
        self.minute_imbalance = np.full((MINUTES_PER_DAY, len(IMBALANCE_DEPTHS)), np.nan)
        self.minute_msgs = np.zeros(MINUTES_PER_DAY, dtype=np.int64)
        self.captured = np.full((config.capture_seconds, 4, levels), np.nan)
        self.imbalance_depths = np.array(IMBALANCE_DEPTHS, dtype=np.int64)

    def consume(self, buf: np.ndarray, n: int, final: bool) -> int:
        return k.consume(
            buf, n, final, self.state, self.params, self.counts, self.book_keys, self.book_sizes,
            self.scratch_px, self.scratch_sz, self.symbol, self.second_valid, self.second_stats,
            self.minute_levels, self.minute_imbalance, self.minute_msgs, self.captured,
            self.imbalance_depths,
        )

    def finish(self) -> None:
        k.emit_until(
            SECONDS_PER_DAY, self.book_keys, self.book_sizes, self.state, self.params,
            self.second_valid, self.second_stats, self.minute_levels, self.minute_imbalance,
            self.captured, self.imbalance_depths,
        )

    def error(self, source_name: str) -> OrderBookInputError | None:
        code = int(self.state[k.S_ERROR_CODE])
        if code == 0:
            return None
        return OrderBookInputError(
            f"{source_name}: line {int(self.state[k.S_ERROR_LINE])}, column "
            f"{int(self.state[k.S_ERROR_COLUMN])}: {k.ERROR_MESSAGES[code]} "
            "(use --skip-bad-lines to count and skip such lines)"
        )


def replay_stream(
    chunks: Iterable[bytes],
    day: dt.date,
    config: ReplayConfig = ReplayConfig(),
    source_name: str = "<stream>",
) -> DayReplay:
    """Replays a day's JSON lines, arriving as byte chunks cut anywhere."""
    replayer = _Replayer(day, config)
    buf = np.empty(0, dtype=np.uint8)
    carried = 0
    bytes_read = 0
    for chunk in chunks:
        bytes_read += len(chunk)
        needed = carried + len(chunk)
        if needed > buf.shape[0]:
            grown = np.empty(max(needed, 2 * buf.shape[0]), dtype=np.uint8)
            grown[:carried] = buf[:carried]
            buf = grown
        buf[carried:needed] = np.frombuffer(chunk, dtype=np.uint8)
        used = replayer.consume(buf, needed, False)
        _raise_on_error(replayer, source_name)
        carried = needed - used
        buf[:carried] = buf[used:needed]  # numpy copies overlapping slices safely
    replayer.consume(buf, carried, True)
    _raise_on_error(replayer, source_name)
    if replayer.counts[k.C_MESSAGES] == 0:
        raise OrderBookInputError(f"{source_name}: no messages (empty file)")
    if replayer.counts[k.C_SNAPSHOTS] == 0:
        raise OrderBookInputError(
            f"{source_name}: no snapshot within the day, so the book can never be built"
        )
    replayer.finish()
    return _result(replayer, day, config, source_name, bytes_read)


def _raise_on_error(replayer: _Replayer, source_name: str) -> None:
    error = replayer.error(source_name)
    if error is not None:
        raise error


def _result(replayer: _Replayer, day, config, source_name, bytes_read) -> DayReplay:
    symbol = bytes(replayer.symbol[: int(replayer.state[k.S_SYMBOL_LEN])]).decode("ascii", "replace")
    return DayReplay(
        day=day,
        day_start_ms=int(replayer.params[k.P_DAY_START]),
        source_name=source_name,
        source_depth=int(replayer.state[k.S_SOURCE_DEPTH]),
        symbol=symbol,
        bytes_read=bytes_read,
        counts={name: int(v) for name, v in zip(k.COUNT_NAMES, replayer.counts)},
        second_valid=replayer.second_valid.astype(bool),
        second_mid=replayer.second_stats[0],
        second_micro=replayer.second_stats[1],
        second_spread=replayer.second_stats[2],
        minute_levels=replayer.minute_levels,
        minute_imbalance=replayer.minute_imbalance,
        minute_msgs=replayer.minute_msgs,
        captured=replayer.captured if config.capture_seconds else None,
    )


def replay_file(path: str | Path, day: dt.date, config: ReplayConfig = ReplayConfig()) -> DayReplay:
    """Replays one day's file (`.data.zip`, `.gz` or plain), streamed in bounded chunks."""
    path = Path(path)
    return replay_stream(prefetched(iter_chunks(path)), day, config, source_name=str(path))
