"""Replay one day of Bybit order-book messages into per-second samples and one-minute books.

The Python side only moves chunks: every line is parsed and applied by the numba kernel in
`_kernel.py`, so the cost per line is compiled code, not the interpreter.
"""

from __future__ import annotations

import datetime as dt
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import _kernel as k
from .quality import SnapshotAgreement, SnapshotDisagreement
from .reader import ChunkPool, OrderBookInputError, pooled_chunks, prefetched
from .schema import IMBALANCE_DEPTHS, MINUTES_PER_DAY, OUT_LEVELS, SECONDS_PER_DAY

BOOK_CAPACITY = 4096  # levels a side kept while replaying: far above the 500 of the deepest files
MESSAGE_CAPACITY = 16384  # levels a side in one message
MAX_LINE_BYTES = 64 << 20  # a real line is ~1 KB (a ob500 snapshot ~25 KB): far more is damage

__all__ = [
    "DayReplay",
    "OrderBookInputError",
    "ReplayConfig",
    "SnapshotAgreement",
    "SnapshotDisagreement",
    "day_start_ms",
    "replay_file",
    "replay_stream",
]


@dataclass(frozen=True)
class ReplayConfig:
    max_silence_s: float = 60.0
    out_levels: int = OUT_LEVELS
    skip_bad_lines: bool = False
    capture_seconds: int = 0  # tests: keep the top levels of every sample k < capture_seconds
    book_capacity: int = BOOK_CAPACITY  # levels a side; past it the deepest level gives way
    # a longer line is a bad line (an error, or counted and skipped with skip_bad_lines): it
    # bounds the memory one line can take, and its time, whatever the file holds
    max_line_bytes: int = MAX_LINE_BYTES

    def __post_init__(self) -> None:
        if self.max_line_bytes < 1:
            raise ValueError(f"max_line_bytes must be >= 1, got {self.max_line_bytes}")
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
    first_ts_ms: int = 0  # ts of the file's first and last messages, whatever day they fall on
    last_ts_ms: int = 0
    # the book against Bybit's snapshots: counts snapshots_compared / _agreeing / _disagreeing /
    # _after_repair are in `counts`; this is the first level that differed (None: none did)
    first_disagreement: SnapshotDisagreement | None = None

    @property
    def valid_share(self) -> float:
        return float(self.second_valid.mean())

    @property
    def snapshots(self) -> SnapshotAgreement:
        """How the replayed book compared with the snapshots it met (see `_kernel._compare_snapshot`)."""
        return SnapshotAgreement.from_counts(self.counts, self.first_disagreement)


def day_start_ms(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1000)


def size_text(n_bytes: int) -> str:
    """64 MB, 100 KB, 12,345 bytes: a limit as the user would write it."""
    if n_bytes % (1 << 20) == 0:
        return f"{n_bytes >> 20} MB"
    if n_bytes % (1 << 10) == 0:
        return f"{n_bytes >> 10} KB"
    return f"{n_bytes:,} bytes"


MESSAGES_PER_BATCH = 16_384
LEVELS_PER_BATCH = 1 << 18  # a side; a 4 MB chunk of real lines holds about 90,000
BATCH_POOL = 6  # batches in flight: one filling, two queued, one replaying, spares


class _Batch:
    """Parsed messages of one chunk: headers and levels in typed arrays, reused across chunks."""

    def __init__(self) -> None:
        self.header = np.zeros(k.BATCH_HEADER, dtype=np.int64)
        self.msg_ts = np.empty(MESSAGES_PER_BATCH, dtype=np.int64)
        self.msg_u = np.empty(MESSAGES_PER_BATCH, dtype=np.int64)
        self.msg_kind = np.empty(MESSAGES_PER_BATCH, dtype=np.int8)
        self.msg_levels = np.empty((MESSAGES_PER_BATCH, 2), dtype=np.int64)
        self.lv_px = np.empty((2, LEVELS_PER_BATCH), dtype=np.float64)
        self.lv_sz = np.empty((2, LEVELS_PER_BATCH), dtype=np.float64)
        self.error: OrderBookInputError | None = None


class _Parser:
    """Byte chunks cut anywhere → parsed batches. Runs in a thread of its own (numba nogil)."""

    def __init__(self, config: ReplayConfig, source_name: str, symbol: str | None = None) -> None:
        self.source_name = source_name
        self.skip_bad_lines = config.skip_bad_lines
        self.max_line_bytes = config.max_line_bytes
        self.state = np.zeros(k.STATE_SIZE, dtype=np.int64)
        self.state[k.S_MAX_LINE] = config.max_line_bytes
        # row 0: the file's symbol (given, or the first a message names); row 1: another one met
        self.symbol = np.zeros((2, 64), dtype=np.uint8)
        self.symbol_given = bool(symbol)
        if symbol:
            raw = symbol.encode("ascii")
            if len(raw) > self.symbol.shape[1]:
                raise ValueError(f"symbol longer than {self.symbol.shape[1]} characters: {symbol!r}")
            self.symbol[0, : len(raw)] = np.frombuffer(raw, dtype=np.uint8)
            self.state[k.S_SYMBOL_LEN] = len(raw)
        self.pending_bad_lines = 0  # over-long lines skipped between batches
        self.bytes_read = 0
        self.free: queue.Queue[_Batch] = queue.Queue()
        for _ in range(BATCH_POOL):
            self.free.put(_Batch())
        self.closed = threading.Event()

    def _take(self) -> _Batch | None:
        while not self.closed.is_set():
            try:
                batch = self.free.get(timeout=0.1)
            except queue.Empty:
                continue
            batch.header[:] = 0
            batch.error = None
            batch.header[k.B_LINES] = batch.header[k.B_BAD_LINES] = self.pending_bad_lines
            self.pending_bad_lines = 0
            return batch
        return None

    def _parse(self, buf: np.ndarray, start: int, n: int, final: bool, batch: _Batch) -> tuple[int, int]:
        return k.parse_batch(
            buf, start, n, final, self.state, self.symbol, batch.header, batch.msg_ts, batch.msg_u,
            batch.msg_kind, batch.msg_levels, batch.lv_px, batch.lv_sz, MESSAGE_CAPACITY,
            self.skip_bad_lines,
        )

    def batches(self, chunks: Iterable[Chunk], release: Release | None = None) -> Iterator[_Batch]:
        """One batch (or more, when one fills) per chunk.

        Chunks are parsed where they lie (no copy of the day's bytes): only the line cut by a
        chunk boundary is stitched together, from the previous chunk's tail and this one's head.
        Each chunk goes to `release` once parsed (its bytes are not read after that).

        The tail carried over never grows past `max_line_bytes`: a line that would is a bad
        line at once (an error, or with skip_bad_lines its bytes are dropped up to its end), so
        a damaged file with one huge line costs time linear in it and memory bounded by the cap.
        """
        carry = bytearray()  # grows in place: appending chunk after chunk stays linear
        skipping = False  # inside an over-long line (skip_bad_lines): drop bytes up to its LF
        segments: list[tuple[Chunk | bytearray, int, bool]]  # (bytes, where its lines start, the day's end)
        for chunk in chunks_then_end(chunks):
            if chunk is None:
                segments = [] if skipping else [(carry, 0, True)]
            else:
                self.bytes_read += len(chunk)
                whole = np.frombuffer(chunk, dtype=np.uint8)
                newline = k.find_byte(whole, 0, k.NEWLINE) if carry or skipping else -1
                if skipping:
                    if newline == whole.shape[0]:
                        _give_back(release, chunk)
                        continue
                    skipping = False
                    segments = [(chunk, newline + 1, False)]
                elif carry and newline == whole.shape[0]:  # a line longer than a chunk
                    if len(carry) + len(chunk) > self.max_line_bytes:
                        carry = bytearray()
                        skipping = True
                        error = self._too_long()
                        _give_back(release, chunk)
                        if error is not None:
                            yield from self._failed(error)
                            return
                        continue
                    carry += chunk
                    _give_back(release, chunk)
                    continue
                elif carry:
                    segments = [(carry + chunk[: newline + 1], 0, False), (chunk, newline + 1, False)]
                else:
                    segments = [(chunk, 0, False)]
            batch = self._take()
            if batch is None:
                return
            data: Chunk | bytearray = b""
            offset = 0
            for data, offset, final in segments:
                buf = np.frombuffer(data, dtype=np.uint8)
                while True:
                    offset, stop = self._parse(buf, offset, buf.shape[0], final, batch)
                    if stop == k.STOP_ERROR:
                        batch.error = self._error()
                        yield batch
                        return
                    if stop != k.STOP_FULL:
                        break
                    yield batch
                    batch = self._take()
                    if batch is None:
                        return
            if len(data) - offset > self.max_line_bytes:  # the unfinished line is too long already
                carry = bytearray()
                skipping = True
                error = self._too_long()
                if error is not None:
                    batch.error = error
                    _give_back(release, chunk)
                    yield batch
                    return
                batch.header[k.B_LINES] += self.pending_bad_lines
                batch.header[k.B_BAD_LINES] += self.pending_bad_lines
                self.pending_bad_lines = 0
            else:
                carry = bytearray(data[offset:])  # a copy: the chunk's buffer is refilled after release
            _give_back(release, chunk)
            yield batch

    def _too_long(self) -> OrderBookInputError | None:
        """The line being read is over the limit: counted to be skipped, or the error to raise."""
        self.state[k.S_LINE_NO] += 1
        if self.skip_bad_lines:
            self.pending_bad_lines += 1
            return None
        return self._long_error(int(self.state[k.S_LINE_NO]))

    def _failed(self, error: OrderBookInputError) -> Iterator[_Batch]:
        batch = self._take()
        if batch is not None:
            batch.error = error
            yield batch

    def _long_error(self, line: int) -> OrderBookInputError:
        return OrderBookInputError(
            f"{self.source_name}: line {line}: longer than {size_text(self.max_line_bytes)} "
            "(ReplayConfig.max_line_bytes; use --skip-bad-lines to count and skip such lines)"
        )

    def _symbol_text(self, row: int, length_at: int) -> str:
        return bytes(self.symbol[row, : int(self.state[length_at])]).decode("ascii", "replace")

    def _error(self) -> OrderBookInputError:
        code = int(self.state[k.S_ERROR_CODE])
        line = int(self.state[k.S_ERROR_LINE])
        if code == k.E_LONG:
            return self._long_error(line)
        if code == k.E_SYMBOL:
            ours = self._symbol_text(0, k.S_SYMBOL_LEN)
            theirs = self._symbol_text(1, k.S_FOREIGN_LEN)
            source = "the file's name or the symbol given" if self.symbol_given else "its first message"
            return OrderBookInputError(
                f"{self.source_name}: line {line}: a message of {theirs}, but the file holds {ours} "
                f"(from {source}): a misnamed or mixed file"
            )
        return OrderBookInputError(
            f"{self.source_name}: line {int(self.state[k.S_ERROR_LINE])}, column "
            f"{int(self.state[k.S_ERROR_COLUMN])}: {k.ERROR_MESSAGES[code]} "
            "(use --skip-bad-lines to count and skip such lines)"
        )


Chunk = bytes | memoryview  # a chunk of the decompressed day; views come from reused buffers
Release = Callable[[Chunk], None]


def _give_back(release: Release | None, chunk) -> None:
    if release is not None and chunk is not None:
        release(chunk)


def chunks_then_end(chunks: Iterable[Chunk]) -> Iterator[Chunk | None]:
    yield from chunks
    yield None


class _Replayer:
    """The book and the day's outputs in typed arrays, fed one parsed batch at a time."""

    def __init__(self, day: dt.date, config: ReplayConfig) -> None:
        start = day_start_ms(day)
        levels = config.out_levels
        self.params = np.zeros(k.PARAMS_SIZE, dtype=np.int64)
        self.params[k.P_DAY_START] = start
        self.params[k.P_DAY_END] = start + SECONDS_PER_DAY * 1000
        self.params[k.P_MAX_SILENCE_MS] = round(config.max_silence_s * 1000)
        self.params[k.P_OUT_LEVELS] = levels
        self.params[k.P_CAPTURE_SECONDS] = config.capture_seconds
        self.params[k.P_MAX_LEVELS] = config.book_capacity
        self.state = np.zeros(k.STATE_SIZE, dtype=np.int64)
        self.counts = np.zeros(len(k.COUNT_NAMES), dtype=np.int64)
        # twice the capacity: each side sits in the middle with room to grow at both ends
        # rows of (price key, size); asks keyed by negated price so both sides sort ascending
        self.book = np.zeros((2, 2 * config.book_capacity + 2, 2), dtype=np.float64)
        k.clear_book(self.state, self.book)
        self.second_valid = np.zeros(SECONDS_PER_DAY, dtype=np.uint8)
        self.second_stats = np.full((3, SECONDS_PER_DAY), np.nan)
        self.minute_levels = np.full((MINUTES_PER_DAY, 4, levels), np.nan)
        self.minute_imbalance = np.full((MINUTES_PER_DAY, len(IMBALANCE_DEPTHS)), np.nan)
        self.minute_msgs = np.zeros(MINUTES_PER_DAY, dtype=np.int64)
        self.captured = np.full((config.capture_seconds, 4, levels), np.nan)
        self.imbalance_depths = np.array(IMBALANCE_DEPTHS, dtype=np.int64)
        self.diff = np.full(k.DIFF_SIZE, np.nan)  # the first snapshot disagreement's values

    def apply(self, batch: _Batch) -> None:
        k.apply_batch(
            batch.header, batch.msg_ts, batch.msg_u, batch.msg_kind, batch.msg_levels, batch.lv_px,
            batch.lv_sz, self.state, self.params, self.counts, self.book,
            self.second_valid, self.second_stats, self.minute_levels, self.minute_imbalance,
            self.minute_msgs, self.captured, self.imbalance_depths, self.diff,
        )

    def first_disagreement(self) -> SnapshotDisagreement | None:
        if self.counts[k.C_SNAP_DISAGREEING] == 0:
            return None
        state, diff = self.state, self.diff

        def value(i: int) -> float | None:
            return None if np.isnan(diff[i]) else float(diff[i])

        return SnapshotDisagreement(
            ts_ms=int(state[k.S_DIFF_TS]),
            side="bid" if state[k.S_DIFF_SIDE] == 0 else "ask",
            level=int(state[k.S_DIFF_LEVEL]),
            ours_price=value(k.D_OURS_PX),
            ours_size=value(k.D_OURS_SZ),
            bybit_price=float(diff[k.D_THEIRS_PX]),
            bybit_size=float(diff[k.D_THEIRS_SZ]),
            repair_since_previous_snapshot=bool(state[k.S_DIFF_REPAIR]),
        )

    def finish(self) -> None:
        k.emit_until(
            SECONDS_PER_DAY, self.book, self.state, self.params,
            self.second_valid, self.second_stats, self.minute_levels, self.minute_imbalance,
            self.captured, self.imbalance_depths,
        )


def replay_stream(
    chunks: Iterable[Chunk],
    day: dt.date,
    config: ReplayConfig = ReplayConfig(),
    source_name: str = "<stream>",
    release: Release | None = None,
    *,
    symbol: str | None = None,
    check_day: bool = False,
) -> DayReplay:
    """Replays a day's JSON lines, arriving as byte chunks cut anywhere.

    Parsing runs one thread ahead of the replay (and, from `replay_file`, decompression one
    more), so on two cores the three stages overlap. Each chunk goes to `release` once parsed.

    Every message's symbol (its topic's and `data.s`) must be `symbol`, or without one the
    first message's: another is an OrderBookInputError naming both (skip_bad_lines or not).
    With `check_day`, a stream whose messages lie mostly outside `day` is one too (`day_error`).
    """
    parser = _Parser(config, source_name, symbol)
    replayer = _Replayer(day, config)
    batches = prefetched(parser.batches(chunks, release), depth=2)
    try:
        for batch in batches:
            replayer.apply(batch)
            error = batch.error
            parser.free.put(batch)
            if error is not None:
                raise error
    finally:
        parser.closed.set()
        batches.close()  # stops the parsing and reading threads, also on an error
    if replayer.counts[k.C_MESSAGES] == 0:
        raise OrderBookInputError(f"{source_name}: no messages (empty file)")
    if check_day:
        error = day_error(replayer.counts, replayer.state, day, source_name)
        if error is not None:
            raise error
    if replayer.counts[k.C_SNAPSHOTS] == 0:
        raise OrderBookInputError(
            f"{source_name}: no snapshot within the day, so the book can never be built"
        )
    replayer.finish()
    return _result(parser, replayer, day, config, source_name)


def day_error(counts: np.ndarray, state: np.ndarray, day: dt.date, source_name: str) -> OrderBookInputError | None:
    """The error for a file whose messages are mostly of another day than its name's, or None.

    More than half the messages before the day or at/after its end (the replay counts them),
    and the middle of their time span on another day: a file renamed to another date, which
    would otherwise come out as a day that is nearly all gap.
    """
    n = int(counts[k.C_MESSAGES])
    outside = int(counts[k.C_BEFORE_DAY] + counts[k.C_AFTER_DAY])
    if n == 0 or 2 * outside <= n:
        return None
    middle = (int(state[k.S_FIRST_TS]) + int(state[k.S_LAST_MSG_TS])) // 2
    try:
        their_day = dt.datetime.fromtimestamp(middle / 1000, dt.UTC).date()
    except (OverflowError, ValueError, OSError):
        their_day = None  # a ts outside the calendar
    if their_day == day:
        return None
    return OrderBookInputError(
        f"{source_name}: named {day.isoformat()} but its messages are from "
        f"{their_day.isoformat() if their_day else 'outside the calendar'} "
        f"({outside:,} of {n:,} messages lie outside {day.isoformat()}): a misnamed file?"
    )


def _result(parser: _Parser, replayer: _Replayer, day, config, source_name) -> DayReplay:
    symbol = parser._symbol_text(0, k.S_SYMBOL_LEN)
    return DayReplay(
        day=day,
        day_start_ms=int(replayer.params[k.P_DAY_START]),
        source_name=source_name,
        source_depth=int(parser.state[k.S_SOURCE_DEPTH]),
        symbol=symbol,
        bytes_read=parser.bytes_read,
        counts={name: int(v) for name, v in zip(k.COUNT_NAMES, replayer.counts)},
        second_valid=replayer.second_valid.astype(bool),
        second_mid=replayer.second_stats[0],
        second_micro=replayer.second_stats[1],
        second_spread=replayer.second_stats[2],
        minute_levels=replayer.minute_levels,
        minute_imbalance=replayer.minute_imbalance,
        minute_msgs=replayer.minute_msgs,
        captured=replayer.captured if config.capture_seconds else None,
        first_ts_ms=int(replayer.state[k.S_FIRST_TS]),
        last_ts_ms=int(replayer.state[k.S_LAST_MSG_TS]),
        first_disagreement=replayer.first_disagreement(),
    )


def replay_file(path: str | Path, day: dt.date, config: ReplayConfig = ReplayConfig(), *,
                symbol: str | None = None, check_day: bool = False) -> DayReplay:
    """Replays one day's file (`.data.zip`, `.gz` or plain), streamed in bounded chunks.

    `symbol` and `check_day` as in `replay_stream`."""
    path = Path(path)
    pool = ChunkPool()
    return replay_stream(prefetched(pooled_chunks(path, pool)), day, config, source_name=str(path),
                         release=pool.give_back, symbol=symbol, check_day=check_day)
