"""The fast engine (`replay.py`, numba) against the reference replay (`reference.py`), exactly.

Random message streams (hypothesis) and the two real slices: the captured top levels of every
sample, the counts, the per-second validity and mid, and every cell of the 1440-row minute
frame must be equal: bit for bit, NaN (reference) matching null or NaN (engine).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import random
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantgod_assets.orderbook.reference import read_lines, reference_replay
from quantgod_assets.orderbook.replay import DayReplay, ReplayConfig, replay_file, replay_stream

from ..builders import ENGINE_DAY, ENGINE_T0, assert_engine_matches

FIXTURES = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures" / "bybit"
XRP = FIXTURES / "2024-12-01_XRPUSDT_ob500.data.zip"
SPOT = FIXTURES / "2026-04-22_BTCUSDT_spot_ob200_first300s.jsonl.gz"

DAY, T0 = ENGINE_DAY, ENGINE_T0
DAY_MS = 86_400_000


def both(lines: list[str], *, out_levels: int, max_silence_s: float, capture_seconds: int):
    ref = reference_replay(
        lines, DAY, max_silence_s=max_silence_s, out_levels=out_levels, capture_seconds=capture_seconds
    )
    data = "".join(line + "\r\n" for line in lines).encode()
    # cut the bytes anywhere: the engine must not care where chunks end
    cuts = sorted({0, len(data), *random.Random(len(data)).sample(range(len(data)), min(5, len(data)))})
    chunks = [data[a:b] for a, b in itertools.pairwise(cuts)]
    config = ReplayConfig(max_silence_s=max_silence_s, out_levels=out_levels, capture_seconds=capture_seconds)
    eng = replay_stream(chunks, DAY, config)
    return ref, eng


# --- random streams -----------------------------------------------------------------------------


def _fmt(value: Decimal, places: int, style: int) -> str:
    """A decimal written as a spot file (no trailing zeros), a linear file (fixed places), or more."""
    fixed = f"{value:.{places}f}"
    if style == 0:
        if "." in fixed:
            fixed = fixed.rstrip("0").rstrip(".")
        return fixed
    if style == 1:
        return fixed
    return fixed + ("" if "." in fixed else ".") + "0" * style


class _StreamMaker:
    def __init__(self, rng: random.Random, tick_places: int, tick_units: int, base_ticks: int) -> None:
        self.rng = rng
        self.places = tick_places
        self.tick = Decimal(tick_units).scaleb(-tick_places)
        self.mid = base_ticks  # in ticks: bids below, asks above
        self.bids: dict[int, str] = {}  # tick index -> size string (a model; may drift from the oracle)
        self.asks: dict[int, str] = {}
        self.u = rng.randint(1, 10**9)

    def px(self, index: int) -> str:
        style = self.rng.choice((0, 0, 1, 1, 2, 3))
        return _fmt(index * self.tick, self.places, style)

    def size(self) -> str:
        rng = self.rng
        places = rng.randint(0, 8)
        value = Decimal(rng.randint(1, 10 ** rng.randint(1, 9))).scaleb(-places)
        return _fmt(value, places, rng.choice((0, 1, 2)))

    def zero(self) -> str:
        return self.rng.choice(("0", "0", "0", "0.0", "0.000"))

    def snapshot_levels(self) -> tuple[list, list]:
        rng = self.rng
        depth = rng.choice((0, 1, 3, 20, 150, 250, 300)) if rng.random() < 0.3 else rng.randint(1, 300)
        gap = rng.randint(0, 3)
        self.bids = {self.mid - 1 - gap - j * rng.randint(1, 2): self.size() for j in range(depth)}
        self.asks = {self.mid + 1 + gap + j * rng.randint(1, 2): self.size() for j in range(depth)}
        if rng.random() < 0.05:
            self.asks = {}
        elif rng.random() < 0.05:
            self.bids = {}
        b = [[self.px(i), s] for i, s in self.bids.items()]
        a = [[self.px(i), s] for i, s in self.asks.items()]
        if rng.random() < 0.3:
            rng.shuffle(b)
            rng.shuffle(a)
        return b, a

    def side_changes(self, side: dict[int, str], is_bid: bool) -> list:
        rng = self.rng
        out = []
        for _ in range(rng.choice((0, 0, 1, 1, 2, 3, 5, 8))):
            r = rng.random()
            if r < 0.25 and side:  # update
                i = rng.choice(list(side))
                side[i] = self.size()
                out.append([self.px(i), side[i]])
            elif r < 0.5 and side:  # delete, often near the top, so deep levels move up
                keys = sorted(side, reverse=is_bid)
                i = keys[min(int(rng.random() ** 4 * len(keys)), len(keys) - 1)]
                del side[i]
                out.append([self.px(i), self.zero()])
            elif r < 0.6:  # delete of an absent level
                i = self.mid + rng.randint(-400, 400)
                if i not in side:
                    out.append([self.px(i), self.zero()])
            elif r < 0.65:  # a crossing insert
                i = self.mid + (rng.randint(0, 6) if is_bid else -rng.randint(0, 6))
                side[i] = self.size()
                out.append([self.px(i), side[i]])
            else:  # insert near the touch
                off = rng.randint(1, 12)
                i = self.mid - off if is_bid else self.mid + off
                side[i] = self.size()
                out.append([self.px(i), side[i]])
        if len(side) > 320:  # the exchange's window: the deepest levels leave as deletes
            for i in sorted(side, reverse=not is_bid)[: len(side) - 300]:
                del side[i]
                out.append([self.px(i), "0"])
        return out

    def message(self, kind: str, ts: int, b: list, a: list) -> str:
        return json.dumps({
            "topic": "orderbook.200.TESTUSDT",
            "type": kind,
            "ts": ts,
            "data": {"s": "TESTUSDT", "b": b, "a": a, "u": self.u, "seq": self.u * 3},
            "cts": ts - 2,
        })

    def next_u(self, is_snapshot: bool) -> None:
        rng = self.rng
        if is_snapshot and rng.random() < 0.5:
            self.u = 1 if rng.random() < 0.5 else self.u + rng.randint(-3, 3)
        elif rng.random() < 0.04:
            self.u += rng.choice((0, 2, 3, -1, 50))  # a gap
        else:
            self.u += 1

    def stream(self, n_messages: int, start_ts: int, pre_deltas: int, after_day: int) -> list[str]:
        rng = self.rng
        lines = []
        ts = start_ts
        for _ in range(pre_deltas):
            ts += rng.randint(0, 300)
            self.next_u(False)
            lines.append(self.message("delta", ts, self.side_changes({}, True), self.side_changes({}, False)))
        for n in range(n_messages):
            if n == 0 or rng.random() < 0.015:
                self.next_u(True)
                b, a = self.snapshot_levels()
                lines.append(self.message("snapshot", ts, b, a))
            else:
                self.mid += rng.choice((-2, -1, 0, 0, 0, 1, 2))
                self.next_u(False)
                touch = rng.random()
                b = self.side_changes(self.bids, True) if touch > 0.3 else []
                a = self.side_changes(self.asks, False) if touch < 0.7 else []
                lines.append(self.message("delta", ts, b, a))
            gap = rng.random()
            ts += 0 if gap < 0.1 else rng.randint(1, 1500) if gap < 0.97 else rng.randint(3_000, 20_000)
        if after_day:
            ts = max(ts, T0 + DAY_MS - rng.randint(0, 3000))
            for _ in range(after_day):
                self.next_u(False)
                lines.append(self.message("delta", ts, self.side_changes(self.bids, True), []))
                ts += rng.randint(0, 2000)
        return lines


def make_stream(seed: int, tick_places: int, tick_units: int, base_ticks: int, n_messages: int,
                start_offset_ms: int, pre_deltas: int, after_day: int) -> list[str]:
    # one seed drives the many small choices (drawing each through hypothesis is far slower),
    # and a failure then prints as a few integers that rebuild the stream
    maker = _StreamMaker(random.Random(seed), tick_places, tick_units, base_ticks)
    return maker.stream(n_messages, T0 + start_offset_ms, pre_deltas, after_day)


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    seed=st.integers(0, 2**64 - 1),
    tick_places=st.sampled_from((0, 1, 2, 4, 8)),
    tick_units=st.sampled_from((1, 5, 25)),
    base_ticks=st.sampled_from((10_000, 123_457, 7_634_410, 19_147)),
    n_messages=st.integers(1, 400),
    start_offset_ms=st.integers(-5_000, 3_000),
    pre_deltas=st.sampled_from((0, 0, 0, 2)),
    after_day=st.sampled_from((0, 0, 0, 3)),
    out_levels=st.sampled_from((1, 5, 5, 5, 200)),
    max_silence_s=st.sampled_from((2.0, 5.0, 60.0)),
)
def test_engine_matches_reference_on_random_streams(
    seed, tick_places, tick_units, base_ticks, n_messages, start_offset_ms, pre_deltas, after_day,
    out_levels, max_silence_s,
):
    lines = make_stream(seed, tick_places, tick_units, base_ticks, n_messages, start_offset_ms,
                        pre_deltas, after_day)
    # capture the seconds the stream spans (not the jump to the day's end, when there is one)
    last_early = max(ts for ts in (json.loads(x)["ts"] for x in lines) if ts < T0 + 3_600_000)
    capture = max(0, (last_early - T0) // 1000 + 3)
    ref, eng = both(lines, out_levels=out_levels, max_silence_s=max_silence_s, capture_seconds=capture)
    assert_engine_matches(ref, eng, out_levels, f"(out_levels={out_levels}, max_silence_s={max_silence_s})")


# --- the real slices, in full -------------------------------------------------------------------


@pytest.mark.parametrize("out_levels", [200, 500, 7])
def test_engine_matches_reference_on_xrp_ob500(out_levels):
    if not XRP.is_file():
        pytest.skip(f"fixture missing: {XRP}")
    day = dt.date(2024, 12, 1)
    ref = reference_replay(read_lines(XRP), day, out_levels=out_levels, capture_seconds=70)
    eng = replay_file(XRP, day, ReplayConfig(out_levels=out_levels, capture_seconds=70))
    assert eng.source_depth == 500 and eng.symbol == "XRPUSDT"
    assert_engine_matches(ref, eng, out_levels, f"(XRP, out_levels={out_levels})")


def test_engine_matches_reference_on_spot_2026():
    if not SPOT.is_file():
        pytest.skip(f"fixture missing: {SPOT}")
    day = dt.date(2026, 4, 22)
    ref = reference_replay(read_lines(SPOT), day, out_levels=200, capture_seconds=400)
    eng = replay_file(SPOT, day, ReplayConfig(out_levels=200, capture_seconds=400))
    assert eng.source_depth == 200 and eng.symbol == "BTCUSDT"
    assert_engine_matches(ref, eng, 200, "(spot 2026)")


def test_engine_skipping_bad_lines_matches_reference():
    def msg(kind: str, ts: int, u: int, b: list, a: list) -> str:
        return json.dumps({"topic": "orderbook.200.X", "type": kind, "ts": ts,
                           "data": {"s": "X", "b": b, "a": a, "u": u, "seq": u}})

    lines = [
        msg("snapshot", T0 + 100, 1, [["100", "1"]], [["101", "1"]]),
        "{not json",
        msg("delta", T0 + 200, 2, [["99", "1"]], [])[:-20],  # cut short
        '{"topic":"orderbook.200.X","type":"other","ts":5,"data":{}}',
        "   ",
        msg("delta", T0 + 1_300, 3, [["98", "1"]], []),
        "[1,2]",
        msg("delta", T0 + 1_400, 4, [["97", "x"]], []),
    ]
    ref = reference_replay(lines, DAY, out_levels=5, capture_seconds=3)
    data = ("\r\n".join(lines) + "\r\n").encode()
    eng = replay_stream([data], DAY, ReplayConfig(out_levels=5, capture_seconds=3, skip_bad_lines=True))
    assert ref.counts["bad_lines"] == 5 and ref.counts["n_lines"] == 7
    assert_engine_matches(ref, eng, 5, "(bad lines)")


# --- the book against Bybit's snapshots, on hand-built lines -------------------------------------


def _line(kind: str, ts: int, u: int, b: list, a: list) -> str:
    return json.dumps({"topic": "orderbook.200.X", "type": kind, "ts": ts,
                       "data": {"s": "X", "b": b, "a": a, "u": u, "seq": u}})


BOOK_B = [["100.0", "1"], ["99.5", "2"]]
BOOK_A = [["101.0", "3"], ["101.5", "4"]]


def _both_snapshots(lines: list[str]) -> DayReplay:
    ref, eng = both(lines, out_levels=5, max_silence_s=60.0, capture_seconds=0)
    assert_engine_matches(ref, eng, 5, "(snapshots)")
    return eng


def test_snapshots_agreeing_with_the_replayed_book_are_counted_the_first_is_not_compared():
    lines = [
        _line("snapshot", T0 + 100, 10, BOOK_B, BOOK_A),
        _line("delta", T0 + 200, 11, [["99.5", "0"], ["100.0", "1.50"]], [["101.0", "0"]]),
        # the same book written another way ("100" for "100.0", "1.5" for "1.50"): equal floats
        _line("snapshot", T0 + 300, 1, [["100", "1.5"]], [["101.5", "4.0"]]),
        _line("delta", T0 + 400, 2, [["99", "5"]], []),
        # the snapshot carries one level a side: only our best one is compared
        _line("snapshot", T0 + 500, 1, [["100.0", "1.5"]], [["101.5", "4"]]),
    ]
    eng = _both_snapshots(lines)
    c = eng.counts
    assert (c["snapshots_compared"], c["snapshots_agreeing"], c["snapshots_disagreeing"]) == (2, 2, 0)
    assert eng.first_disagreement is None and eng.snapshots.after_repair == 0


def test_a_one_sided_crossing_repair_before_a_disagreeing_snapshot_is_reported():
    lines = [
        _line("snapshot", T0 + 100, 10, BOOK_B, BOOK_A),
        # a bid at the best ask, bids only: the repair removes the ask at 101.0
        _line("delta", T0 + 200, 11, [["101.0", "7"]], []),
        # Bybit's book never held that bid (a missed delete on our side, as it looks)
        _line("snapshot", T0 + 300, 12, BOOK_B, BOOK_A),
    ]
    eng = _both_snapshots(lines)
    assert eng.counts["crossed_levels_removed"] == 1
    assert eng.counts["snapshots_disagreeing"] == 1 and eng.counts["snapshots_after_repair"] == 1
    first = eng.first_disagreement
    assert first is not None and first.repair_since_previous_snapshot
    assert (first.side, first.level, first.ours_price, first.ours_size) == ("bid", 0, 101.0, 7.0)
    assert (first.bybit_price, first.bybit_size, first.ts_ms) == (100.0, 1.0, T0 + 300)


def test_a_repair_flag_is_per_snapshot_and_a_missing_level_of_ours_is_none():
    lines = [
        _line("snapshot", T0 + 100, 10, BOOK_B, BOOK_A),
        _line("delta", T0 + 200, 11, [], [["99.5", "1"]]),  # asks only: both bids removed
        _line("snapshot", T0 + 300, 12, [], [["99.5", "1"], *BOOK_A]),  # agrees (bids empty)
        _line("delta", T0 + 400, 13, [], [["101.5", "0"]]),
        # no repair since the snapshot before; our asks are two, Bybit's three
        _line("snapshot", T0 + 500, 14, [["98", "1"]], [["99.5", "1"], ["101.0", "3"], ["102", "1"]]),
    ]
    eng = _both_snapshots(lines)
    c = eng.counts
    assert (c["snapshots_compared"], c["snapshots_agreeing"], c["snapshots_disagreeing"]) == (2, 1, 1)
    assert c["snapshots_after_repair"] == 1
    first = eng.first_disagreement
    assert first is not None and not first.repair_since_previous_snapshot
    assert (first.side, first.level, first.ours_price, first.ours_size) == ("bid", 0, None, None)
    assert "ours none, Bybit's 98.0 x 1.0" in first.text()


def test_the_next_days_snapshot_is_compared_unless_a_next_day_delta_came_first():
    opening = _line("snapshot", T0 + 100, 10, BOOK_B, BOOK_A)
    closing_other = _line("snapshot", T0 + DAY_MS + 300, 12, BOOK_B, [["101.0", "9"]])
    eng = _both_snapshots([opening, closing_other])
    assert eng.counts["messages_after_day"] == 1 and eng.counts["snapshots_disagreeing"] == 1
    first = eng.first_disagreement
    assert first is not None and (first.side, first.level, first.ours_size, first.bybit_size) == ("ask", 0, 3.0, 9.0)
    assert first.time_text() == "2024-03-06 00:00:00.300 UTC"
    # a delta stamped after midnight is not applied: the book is behind, the snapshot not compared
    late = _line("delta", T0 + DAY_MS + 200, 11, [["100.0", "2"]], [])
    eng = _both_snapshots([opening, late, closing_other])
    assert eng.counts["snapshots_compared"] == 0


def test_a_snapshot_onto_an_empty_book_is_not_compared():
    lines = [
        _line("delta", T0 + 50, 9, [["100.0", "1"]], []),  # before any snapshot: skipped
        _line("snapshot", T0 + 100, 10, [], []),  # a delisting: both sides empty
        _line("snapshot", T0 + 200, 1, BOOK_B, BOOK_A),
    ]
    eng = _both_snapshots(lines)
    assert eng.counts["snapshots_compared"] == 0 and eng.counts["n_snapshots"] == 2
