"""The slow, obviously-correct reference replay (the oracle) of one day of Bybit order-book lines.

Pure Python, written to be read, not to be fast: the book is two dicts keyed by
`Decimal(price_string)` (so `"76344"` and `"76344.00"` are one level), every message is parsed
with `json.loads` and every sample is taken by sorting the dicts. The fast engine
(`replay.py` + `_kernel.py`) must agree with it bit for bit; the tests check that.

The rules, applied literally:

- A snapshot clears both sides and sets the book; a delta sets each `[price, size]`, size 0
  deletes, deleting an absent level is ignored. Deltas before the first snapshot are skipped
  and counted (`deltas_before_snapshot`).
- The full depth is kept while replaying; it is cut to `out_levels` only on output.
- A message that leaves the book crossed (best bid >= best ask) is counted in
  `crossed_messages`; if it touched only one side (only that side's list non-empty), the
  levels of the other side that cross the touched side's best are removed and counted in
  `crossed_levels_removed`. A message that touched both sides leaves the book as it is.
- Between consecutive applied messages, a delta's `u` must be the previous message's `u + 1`,
  else `seq_gaps += 1` (the replay carries on). A snapshot sets `u` without a check.
- Messages with `ts` before the day are applied but not sampled (`messages_before_day`);
  messages with `ts` at or after the day's end are not applied (`messages_after_day`).
- A snapshot that meets a valid book (a snapshot applied before, a level on either side) is
  first compared with it: its i-th bid (ask), as the message lists them, against our i-th best
  bid (ask), over the levels the snapshot carries, as (float(price string), float(size string));
  a level we lack compares as (NaN, NaN). Bids first, then asks. `snapshots_compared`, then
  `snapshots_agreeing` or `snapshots_disagreeing`; `snapshots_after_repair` when levels were
  removed by the crossing rule since the previous snapshot. The first mismatching level of the
  first disagreeing snapshot is `first_disagreement`. A snapshot at or after the day's end is
  compared too (not applied), unless a delta at or after the day's end came before it.
- Sample k (0 … 86,399) is the book after every message with `ts < day_start + (k+1)*1000`;
  it is valid when a snapshot has been applied, both sides are non-empty and the last applied
  message is at most `max_silence_s` old at the sample time.

What is a valid line (anything else is a bad line, counted in `bad_lines`):

- strict JSON (json.loads: no NaN/Infinity, no control bytes, no trailing commas) holding an
  object with `type` "snapshot" or "delta", an integer `ts` and a `data` object with an
  integer `u`; `ts` and `u` are bare JSON integers within ±(2**63 - 1), never strings;
- `data.b` / `data.a`, when present, are lists of exactly two-element `[price, size]` lists;
  each number is a string `-?[0-9]*.?[0-9]*` (at least one digit) or a bare JSON number
  without an exponent, is not negative, and is exact in a double the way the engine reads
  it: at most 18 significant digits, and with a power of ten other than 1 a mantissa of at
  most 2**53 and an exponent within ±22 (`_exact_in_double`);
- no longer than `max_line_bytes`, when given.
"""

from __future__ import annotations

import datetime as dt
import functools
import gzip
import json
import re
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

from .schema import IMBALANCE_DEPTHS, STAT_COLUMNS, level_columns

SECONDS_PER_DAY = 86_400
MINUTES_PER_DAY = 1_440
DAY_MS = SECONDS_PER_DAY * 1000
NAN = float("nan")

COUNT_KEYS = (
    "n_lines",
    "n_messages",
    "n_snapshots",
    "n_deltas",
    "deltas_before_snapshot",
    "seq_gaps",
    "crossed_messages",
    "crossed_levels_removed",
    "messages_before_day",
    "messages_after_day",
    "bad_lines",
    "snapshots_compared",
    "snapshots_agreeing",
    "snapshots_disagreeing",
    "snapshots_after_repair",
)

Level = tuple[float, float]


@dataclass
class ReferenceResult:
    counts: dict[str, int]
    second_valid: list[bool]  # 86400
    second_mid: list[float]  # NaN when invalid
    minute_rows: list[dict[str, float | int]]  # 1440 rows keyed by the book columns, no "ts"
    # for k < capture_seconds: (top out_levels bids best-first, top asks best-first), every sample
    captured: list[tuple[list[Level], list[Level]]] = field(default_factory=list)
    # the first level where the book differed from a snapshot: ts_ms, side ("bid"/"ask"), level,
    # ours_price, ours_size (None when we lack the level), bybit_price, bybit_size,
    # repair_since_previous_snapshot; None when every compared snapshot agreed
    first_disagreement: dict[str, object] | None = None


# --- reading -----------------------------------------------------------------------------------


def read_lines(path: Path) -> Iterator[bytes]:
    """The lines of a day's file (`.zip` with one member, `.gz`, or plain), without CR/LF."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".zip"):
        with zipfile.ZipFile(path) as archive:
            members = [info for info in archive.infolist() if not info.is_dir()]
            if len(members) != 1:
                raise ValueError(f"{path}: expected one member in the ZIP, found {len(members)}")
            with archive.open(members[0]) as stream:
                yield from _lines_of(stream)
    elif name.endswith(".gz"):
        with gzip.open(path, "rb") as stream:
            yield from _lines_of(stream)
    else:
        with open(path, "rb") as stream:
            yield from _lines_of(stream)


def _lines_of(stream) -> Iterator[bytes]:
    for raw in stream:
        yield raw.rstrip(b"\r\n")


# --- parsing one line -----------------------------------------------------------------------


@dataclass
class _Message:
    is_snapshot: bool
    ts: int
    u: int
    bids: list[tuple[Decimal, Decimal, str, str]]  # (price, size, price string, size string)
    asks: list[tuple[Decimal, Decimal, str, str]]


INT64_LIMIT = 2**63  # ts and u lie strictly within ±INT64_LIMIT
NUMBER_TEXT = re.compile(r"-?[0-9]*\.?[0-9]*")
MAX_SIGNIFICANT_DIGITS = 18


class _BareFloat(str):
    """A bare JSON number with a fraction or exponent, kept as its text (json.loads' parse_float)."""


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _exact_in_double(text: str) -> bool:
    """Whether the engine reads this number exactly (see `_kernel._parse_decimal_general`)."""
    unsigned = text.lstrip("-")
    fraction = unsigned.partition(".")[2]
    significant = unsigned.replace(".", "").lstrip("0")
    if not significant:
        return True  # zero
    core = significant.rstrip("0")
    exponent = len(significant) - len(core) - len(fraction)
    if len(core) > MAX_SIGNIFICANT_DIGITS:
        return False
    return exponent == 0 or (int(core) <= 2**53 and -22 <= exponent <= 22)


def _number_text(value) -> str:
    if isinstance(value, bool):
        raise ValueError("a boolean is no number")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, _BareFloat):
        if "e" in value or "E" in value:
            raise ValueError("exponent notation")
        return str(value)
    if not isinstance(value, str):
        raise ValueError("a level holds no number")
    if not NUMBER_TEXT.fullmatch(value) or not any(c.isdigit() for c in value):
        raise ValueError("not a decimal number")
    return value


def _parse_levels(raw) -> list[tuple[Decimal, Decimal, str, str]]:
    if not isinstance(raw, list):
        raise ValueError("levels are not a list")
    levels = []
    for entry in raw:
        if not isinstance(entry, list) or len(entry) != 2:
            raise ValueError("a level is not [price, size]")
        price_s, size_s = _number_text(entry[0]), _number_text(entry[1])
        if not (_exact_in_double(price_s) and _exact_in_double(size_s)):
            raise ValueError("more significant digits than a double holds exactly")
        price, size = Decimal(price_s), Decimal(size_s)
        if price < 0 or size < 0:
            raise ValueError("negative price or size")
        levels.append((price, size, price_s, size_s))
    return levels


def _is_int64(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -INT64_LIMIT < value < INT64_LIMIT


def _parse(line: bytes | str) -> _Message | None:
    """The message on one line, or None when the line is not a valid order-book message."""
    try:
        obj = json.loads(line, parse_float=_BareFloat, parse_constant=_no_constant)
        if not isinstance(obj, dict):
            return None
        kind = obj["type"]
        if kind not in ("snapshot", "delta"):
            return None
        data = obj["data"]
        if not isinstance(data, dict):
            return None
        ts = obj["ts"]
        u = data["u"]
        if not (_is_int64(ts) and _is_int64(u)):
            return None
        return _Message(
            is_snapshot=kind == "snapshot",
            ts=ts,
            u=u,
            bids=_parse_levels(data.get("b", [])),
            asks=_parse_levels(data.get("a", [])),
        )
    except (ValueError, KeyError, TypeError, InvalidOperation):
        return None


# --- the book ---------------------------------------------------------------------------------


class _Book:
    """Two dicts Decimal price -> (Decimal size, price string, size string); full depth."""

    def __init__(self) -> None:
        self.bids: dict[Decimal, tuple[Decimal, str, str]] = {}
        self.asks: dict[Decimal, tuple[Decimal, str, str]] = {}

    def clear(self) -> None:
        self.bids.clear()
        self.asks.clear()

    @staticmethod
    def _set(side: dict, levels) -> None:
        for price, size, price_s, size_s in levels:
            if size == 0:
                side.pop(price, None)  # deleting an absent level is ignored
            else:
                side[price] = (size, price_s, size_s)

    def apply(self, msg: _Message) -> None:
        if msg.is_snapshot:
            self.clear()
        self._set(self.bids, msg.bids)
        self._set(self.asks, msg.asks)

    def best_bid(self) -> Decimal | None:
        return max(self.bids) if self.bids else None

    def best_ask(self) -> Decimal | None:
        return min(self.asks) if self.asks else None

    def top(self, n: int) -> tuple[list[Level], list[Level]]:
        """Top n levels a side, best first, as (float(price string), float(size string))."""
        bids = sorted(self.bids.items(), key=lambda item: item[0], reverse=True)[:n]
        asks = sorted(self.asks.items(), key=lambda item: item[0])[:n]
        return (
            [(float(ps), float(ss)) for _, (_, ps, ss) in bids],
            [(float(ps), float(ss)) for _, (_, ps, ss) in asks],
        )


# --- one sample ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Sample:
    valid: bool
    bids: list[Level]  # top max(out_levels, deepest imbalance depth) levels, best first
    asks: list[Level]
    mid: float = NAN
    micro: float = NAN
    spread: float = NAN


def _imbalance(bids: list[Level], asks: list[Level], depth: int) -> float:
    bid_sum = 0.0
    for _, size in bids[:depth]:
        bid_sum += size
    ask_sum = 0.0
    for _, size in asks[:depth]:
        ask_sum += size
    return (bid_sum - ask_sum) / (bid_sum + ask_sum)


# --- the replay -----------------------------------------------------------------------------


def _day_start_ms(day: dt.date) -> int:
    midnight = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    return int(midnight.timestamp()) * 1000


def reference_replay(
    lines: Iterable[bytes | str],
    day: dt.date,
    *,
    max_silence_s: float = 60.0,
    out_levels: int = 200,
    capture_seconds: int = 0,
    max_line_bytes: int | None = None,
) -> ReferenceResult:
    """Replays the lines of one day literally; see the module docstring for the rules."""
    day_start = _day_start_ms(day)
    day_end = day_start + DAY_MS
    counts = {key: 0 for key in COUNT_KEYS}
    book = _Book()
    have_snapshot = False
    last_u: int | None = None
    last_ts: int | None = None
    minute_msgs = [0] * MINUTES_PER_DAY
    samples: list[_Sample] = []
    # the top levels change only when a message is applied: sort once per change, not per second
    view_depth = max(out_levels, max(IMBALANCE_DEPTHS))
    cached_top: tuple[list[Level], list[Level]] | None = None
    # a sample is never changed once taken: while the book and the validity stay the same,
    # the next second's sample is the same object
    previous: _Sample | None = None

    def take_sample(k: int) -> None:
        nonlocal cached_top, previous
        if cached_top is None:
            cached_top = book.top(view_depth)
            previous = None
        bids, asks = cached_top
        sample_time = day_start + (k + 1) * 1000
        valid = (
            have_snapshot
            and len(bids) > 0
            and len(asks) > 0
            and last_ts is not None
            and (sample_time - last_ts) <= max_silence_s * 1000
        )
        if previous is not None and previous.valid == valid:
            samples.append(previous)
            return
        sample = _Sample(valid=valid, bids=bids, asks=asks)
        if valid:
            bid_px, bid_sz = bids[0]
            ask_px, ask_sz = asks[0]
            sample.mid = (bid_px + ask_px) / 2
            sample.micro = (bid_px * ask_sz + ask_px * bid_sz) / (bid_sz + ask_sz)
            sample.spread = ask_px - bid_px
        samples.append(sample)
        previous = sample

    def sample_until(ts: int) -> None:
        """Takes every sample whose time day_start + (k+1)*1000 is <= ts (it excludes ts)."""
        while len(samples) < SECONDS_PER_DAY and day_start + (len(samples) + 1) * 1000 <= ts:
            take_sample(len(samples))

    first_disagreement: dict[str, object] | None = None
    removed_at_snapshot = 0  # crossed_levels_removed when the previous snapshot came
    stale = False  # a delta at or after the day's end was skipped: the book is behind the file

    def compare(msg: _Message) -> None:
        nonlocal first_disagreement, removed_at_snapshot
        if have_snapshot and (book.bids or book.asks):
            counts["snapshots_compared"] += 1
            repaired = counts["crossed_levels_removed"] > removed_at_snapshot
            counts["snapshots_after_repair"] += repaired
            found = _first_mismatch(book, msg)
            if found is None:
                counts["snapshots_agreeing"] += 1
            else:
                if counts["snapshots_disagreeing"] == 0:
                    first_disagreement = {"ts_ms": msg.ts, **found, "repair_since_previous_snapshot": repaired}
                counts["snapshots_disagreeing"] += 1
        removed_at_snapshot = counts["crossed_levels_removed"]

    for line in lines:
        if isinstance(line, bytes):
            line = line.rstrip(b"\r\n")
            long = max_line_bytes is not None and len(line) > max_line_bytes
            if not long and not line.strip(b" \t\r\n"):
                continue
        else:
            line = line.rstrip("\r\n")
            long = max_line_bytes is not None and len(line.encode()) > max_line_bytes
            if not long and not line.strip(" \t\r\n"):
                continue
        counts["n_lines"] += 1
        msg = None if long else _parse(line)
        if msg is None:
            counts["bad_lines"] += 1
            continue
        counts["n_messages"] += 1
        if msg.ts >= day_end:
            counts["messages_after_day"] += 1
            if not msg.is_snapshot:
                stale = True
            elif not stale:
                compare(msg)
            continue
        if not msg.is_snapshot and not have_snapshot:
            counts["deltas_before_snapshot"] += 1
            continue
        sample_until(msg.ts)
        if msg.is_snapshot:
            compare(msg)
            counts["n_snapshots"] += 1
            have_snapshot = True
        else:
            counts["n_deltas"] += 1
            if last_u is not None and msg.u != last_u + 1:
                counts["seq_gaps"] += 1
        last_u = msg.u
        book.apply(msg)
        _uncross(book, msg, counts)
        cached_top = None
        last_ts = msg.ts
        if msg.ts < day_start:
            counts["messages_before_day"] += 1
        else:
            minute_msgs[(msg.ts - day_start) // 60_000] += 1
    sample_until(day_end)

    captured = [
        (list(samples[k].bids[:out_levels]), list(samples[k].asks[:out_levels]))
        for k in range(min(capture_seconds, SECONDS_PER_DAY))
    ]
    return ReferenceResult(
        counts=counts,
        second_valid=[s.valid for s in samples],
        second_mid=[s.mid for s in samples],
        minute_rows=[_minute_row(samples, m, out_levels, minute_msgs[m]) for m in range(MINUTES_PER_DAY)],
        captured=captured,
        first_disagreement=first_disagreement,
    )


def _first_mismatch(book: _Book, msg: _Message) -> dict[str, object] | None:
    """The snapshot's first level (bids, then asks) that differs from our level of the same rank."""
    ours_bids, ours_asks = book.top(max(len(msg.bids), len(msg.asks)))
    for side, ours, theirs in (("bid", ours_bids, msg.bids), ("ask", ours_asks, msg.asks)):
        for i, (_, _, price_s, size_s) in enumerate(theirs):
            bybit_price, bybit_size = float(price_s), float(size_s)
            if i < len(ours) and ours[i][0] == bybit_price and ours[i][1] == bybit_size:
                continue
            return {
                "side": side, "level": i,
                "ours_price": ours[i][0] if i < len(ours) else None,
                "ours_size": ours[i][1] if i < len(ours) else None,
                "bybit_price": bybit_price, "bybit_size": bybit_size,
            }
    return None


def _uncross(book: _Book, msg: _Message, counts: dict[str, int]) -> None:
    best_bid, best_ask = book.best_bid(), book.best_ask()
    if best_bid is None or best_ask is None or best_bid < best_ask:
        return
    counts["crossed_messages"] += 1
    touched_bids, touched_asks = len(msg.bids) > 0, len(msg.asks) > 0
    if touched_bids and not touched_asks:
        for price in [p for p in book.asks if p <= best_bid]:
            del book.asks[price]
            counts["crossed_levels_removed"] += 1
    elif touched_asks and not touched_bids:
        for price in [p for p in book.bids if p >= best_ask]:
            del book.bids[price]
            counts["crossed_levels_removed"] += 1


def _minute_row(samples: list[_Sample], m: int, out_levels: int, n_msgs: int) -> dict[str, float | int]:
    close = samples[60 * m + 59]
    row: dict[str, float | int] = {}
    for i, names in enumerate(_level_names(out_levels)):
        have_bid = close.valid and i < len(close.bids)
        have_ask = close.valid and i < len(close.asks)
        bid_px, bid_sz, ask_px, ask_sz = names
        row[bid_px] = close.bids[i][0] if have_bid else NAN
        row[bid_sz] = close.bids[i][1] if have_bid else NAN
        row[ask_px] = close.asks[i][0] if have_ask else NAN
        row[ask_sz] = close.asks[i][1] if have_ask else NAN
    valid = [s for s in samples[60 * m : 60 * m + 60] if s.valid]
    if valid:
        mids = [s.mid for s in valid]
        micro_sum = 0.0
        spread_sum = 0.0
        for s in valid:
            micro_sum += s.micro
            spread_sum += s.spread
        row["mid_open"] = mids[0]
        row["mid_high"] = max(mids)
        row["mid_low"] = min(mids)
        row["mid_close"] = mids[-1]
        row["micro_price_mean"] = micro_sum / len(valid)
        row["spread_mean"] = spread_sum / len(valid)
    else:
        for name in ("mid_open", "mid_high", "mid_low", "mid_close", "micro_price_mean", "spread_mean"):
            row[name] = NAN
    row["micro_price"] = close.micro
    row["spread"] = close.spread
    for depth in IMBALANCE_DEPTHS:
        row[f"imbalance_{depth}"] = _imbalance(close.bids, close.asks, depth) if close.valid else NAN
    row["n_msgs"] = n_msgs
    row["valid_seconds"] = len(valid)
    return {name: row[name] for name in _row_names(out_levels)}


@functools.cache
def _level_names(out_levels: int) -> tuple[tuple[str, str, str, str], ...]:
    names = level_columns(out_levels)
    return tuple((names[4 * i], names[4 * i + 1], names[4 * i + 2], names[4 * i + 3]) for i in range(out_levels))


@functools.cache
def _row_names(out_levels: int) -> tuple[str, ...]:
    return (*level_columns(out_levels), *STAT_COLUMNS, "n_msgs", "valid_seconds")
