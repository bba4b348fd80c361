"""The generator's discriminating faults (early_deltas, boundary, narrow_restart, one_sided_cross).

Each fault's short day is replayed by the engine (`replay_file`) and by the reference (the Decimal
oracle) and the two must agree sample by sample; then a targeted check that the fault did what
it says, read from the file itself (a dict book) and the engine's samples.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from quantgod_assets.cli import build_parser
from quantgod_assets.cli import main as cli_main
from quantgod_assets.orderbook.etl import convert_day
from quantgod_assets.orderbook.reference import read_lines, reference_replay
from quantgod_assets.orderbook.replay import DayReplay, ReplayConfig, replay_file
from quantgod_assets.orderbook.synthetic import CROSS_TICKS, FAULTS, fault_times, generate_day, generate_days

from ..builders import DictBook, assert_engine_matches, day_start_ms

DAY = dt.date(2025, 3, 10)
START = day_start_ms(DAY)
SECONDS = 120
LEVELS = 200
NEW_FAULTS = ("early_deltas", "boundary", "narrow_restart", "one_sided_cross")


def engine_and_reference(path: Path, capture: int = SECONDS + 2, skip_bad_lines: bool = False) -> DayReplay:
    """The engine's replay of `path`, after checking it equals the reference's, sample by sample."""
    ref = reference_replay(read_lines(path), DAY, out_levels=LEVELS, capture_seconds=capture)
    config = ReplayConfig(out_levels=LEVELS, capture_seconds=capture, skip_bad_lines=skip_bad_lines)
    eng = replay_file(path, DAY, config)
    assert_engine_matches(ref, eng, LEVELS, f"({path.name})")
    return eng


def fault_file(tmp_path: Path, *faults: str, seconds: int = SECONDS, seed: int = 7) -> tuple[Path, list[dict]]:
    path = generate_day(DAY, tmp_path, seed=seed, faults=faults, duration_s=seconds)
    return path, [json.loads(line) for line in read_lines(path)]


def top(book: DictBook) -> np.ndarray:
    """The dict book's top LEVELS as the engine captures a sample: [bid_px, bid_sz, ask_px, ask_sz]."""
    out = np.full((4, LEVELS), np.nan)
    bids = sorted(book.bids.items(), reverse=True)[:LEVELS]
    asks = sorted(book.asks.items())[:LEVELS]
    for i, (px, sz) in enumerate(bids):
        out[0, i], out[1, i] = float(px), float(sz)
    for i, (px, sz) in enumerate(asks):
        out[2, i], out[3, i] = float(px), float(sz)
    return out


def levels(sample: np.ndarray, side: int) -> dict[float, float]:
    """price -> size of one side (0 bids, 1 asks) of a captured sample."""
    px, sz = sample[2 * side], sample[2 * side + 1]
    return {float(p): float(s) for p, s in zip(px, sz) if not np.isnan(p)}


def test_the_new_faults_have_whole_second_times():
    for seconds in (SECONDS, None):
        at = fault_times(seconds)
        assert at["early_deltas"] == (2_500, 0)
        for name in ("boundary", "one_sided_cross", "narrow_restart"):
            assert at[name][0] % 1000 == 0 and at[name][1] == 0
        assert set(NEW_FAULTS) <= set(FAULTS) and set(at) | {"truncated"} == set(FAULTS)
        times = sorted(t for t, _ in at.values())
        assert len(set(times)) == len(times)  # no two faults on one message


def test_early_deltas_are_skipped_and_counted(tmp_path):
    path, msgs = fault_file(tmp_path, "early_deltas")
    first = next(i for i, m in enumerate(msgs) if m["type"] == "snapshot")
    early = msgs[:first]
    assert len(early) >= 10 and all(m["type"] == "delta" for m in early)
    assert msgs[first]["ts"] == START + 2_500
    assert all(m["ts"] < START + 2_500 for m in early)
    u = [m["data"]["u"] for m in msgs]
    assert np.all(np.diff(u[:first]) == 1) and u[first] == u[first - 1] and u[first + 1] == u[first] + 1
    eng = engine_and_reference(path)
    assert eng.counts["deltas_before_snapshot"] == len(early)
    assert eng.counts["n_deltas"] == len(msgs) - len(early) - 1 and eng.counts["n_snapshots"] == 1
    assert eng.counts["seq_gaps"] == 0
    # never applied: the samples before the snapshot (at 1 s and 2 s) hold no book at all
    assert eng.captured is not None and np.isnan(eng.captured[:2]).all()
    assert not eng.second_valid[:2].any() and eng.second_valid[2:SECONDS - 1].all()
    book = DictBook()
    for m in msgs[first:]:
        if m["ts"] >= START + 3_000:
            break
        book.apply(m)
    assert np.array_equal(eng.captured[2], top(book), equal_nan=True)
    in_minute = sum(m["ts"] < START + 60_000 for m in msgs)
    assert int(eng.minute_msgs[0]) == in_minute - len(early)  # skipped deltas are not the minute's messages


def test_a_message_on_a_second_boundary_belongs_to_the_next_sample(tmp_path):
    path, msgs = fault_file(tmp_path, "boundary")
    edge = fault_times(SECONDS)["boundary"][0]
    on_edge = [i for i, m in enumerate(msgs) if m["ts"] == START + edge]
    assert len(on_edge) == 1
    (j,) = on_edge
    assert msgs[j + 1]["ts"] >= START + edge + 1000  # the next second holds only it
    before, after = DictBook(), DictBook()
    for m in msgs[:j]:
        before.apply(m)
        after.apply(m)
    after.apply(msgs[j])
    assert not np.array_equal(top(before), top(after), equal_nan=True)  # it changes the sampled book
    eng = engine_and_reference(path)
    assert eng.captured is not None
    k = edge // 1000 - 1  # sample k is taken at day_start + edge: the message's own ts
    assert np.array_equal(eng.captured[k], top(before), equal_nan=True)
    assert np.array_equal(eng.captured[k + 1], top(after), equal_nan=True)
    assert not np.array_equal(eng.captured[k], eng.captured[k + 1], equal_nan=True)


def test_a_narrow_restart_clears_the_levels_it_lacks(tmp_path):
    path, msgs = fault_file(tmp_path, "narrow_restart")
    edge = fault_times(SECONDS)["narrow_restart"][0]
    snaps = [i for i, m in enumerate(msgs) if m["type"] == "snapshot"]
    assert len(snaps) == 2 and snaps[0] == 0
    i = snaps[1]
    snap = msgs[i]
    assert snap["data"]["u"] == 1 and msgs[i + 1]["data"]["u"] == 2
    assert snap["ts"] < START + edge <= msgs[i + 1]["ts"]  # the last message before the sample
    assert len(snap["data"]["b"]) == len(snap["data"]["a"]) == LEVELS // 4
    book = DictBook()
    for m in msgs[:i]:
        book.apply(m)
    held = (dict(book.bids), dict(book.asks))
    assert len(held[0]) == len(held[1]) == LEVELS
    book.apply(snap)
    for side, now in enumerate((book.bids, book.asks)):
        assert set(now) < set(held[side])  # the top quarter of the prices ...
        assert all(held[side][px] != sz for px, sz in now.items())  # ... each with another size

    eng = engine_and_reference(path)
    assert eng.captured is not None
    k = edge // 1000 - 1
    for side, now in enumerate((book.bids, book.asks)):
        sampled = levels(eng.captured[k], side)
        assert sampled == {float(px): float(sz) for px, sz in now.items()}
        gone = {float(px) for px in held[side]} - {float(px) for px in now}
        assert len(gone) == LEVELS - LEVELS // 4 and not gone & set(sampled)
        assert len(levels(eng.captured[k + 1], side)) == LEVELS  # the next delta refilled the window
    assert eng.second_valid[k] and eng.counts["n_snapshots"] == 2


def test_a_one_sided_crossing_delta_is_repaired_and_sampled(tmp_path):
    path, msgs = fault_file(tmp_path, "one_sided_cross")
    edge = fault_times(SECONDS)["one_sided_cross"][0]
    j = max(i for i, m in enumerate(msgs) if m["ts"] < START + edge)
    cross = msgs[j]
    assert cross["type"] == "delta" and cross["data"]["b"] and cross["data"]["a"] == []
    book = DictBook()
    for m in msgs[:j]:
        book.apply(m)
    best_ask = min(book.asks)
    bid = max(Decimal(px) for px, sz in cross["data"]["b"] if Decimal(sz) != 0)
    assert bid == best_ask + CROSS_TICKS * Decimal("0.1")
    crossing_asks = [px for px in book.asks if px <= bid]
    assert len(crossing_asks) >= 1

    eng = engine_and_reference(path)
    assert eng.counts["crossed_messages"] == 1
    assert eng.counts["crossed_levels_removed"] == len(crossing_asks) > 0
    assert eng.captured is not None
    k = edge // 1000 - 1  # the sample right after the crossing delta
    sample = eng.captured[k]
    assert sample[0, 0] == float(bid)  # the crossed state was sampled ...
    assert sample[0, 0] < sample[2, 0]  # ... repaired: not crossed
    asks = levels(sample, 1)
    assert min(asks) > float(bid) and len(asks) == LEVELS - len(crossing_asks)
    assert not set(map(float, crossing_asks)) & set(asks)
    assert eng.second_valid[k]
    # the next delta moves both sides back to the price path: the window is whole again
    nxt = eng.captured[k + 1]
    assert nxt[0, 0] < nxt[2, 0] and len(levels(nxt, 0)) == len(levels(nxt, 1)) == LEVELS


def test_all_faults_together_replay_like_the_reference(tmp_path):
    faults = [f for f in FAULTS if f != "truncated"]
    path = generate_day(DAY, tmp_path, seed=7, faults=tuple(faults), duration_s=600)  # one line malformed
    eng = engine_and_reference(path, capture=602, skip_bad_lines=True)
    counts = eng.counts
    assert counts["deltas_before_snapshot"] > 0 and counts["bad_lines"] == 1
    assert counts["seq_gaps"] == 1 and counts["n_snapshots"] == 3
    assert counts["crossed_messages"] == 2 and counts["crossed_levels_removed"] > 0


def test_convert_day_reads_the_faults(tmp_path):
    """The ETL's own entry point over a day holding the four: the rows the engine's replay gives."""
    path, _ = fault_file(tmp_path, *NEW_FAULTS)
    summary = convert_day(path, tmp_path / "out.parquet", day=DAY)
    frame = pl.read_parquet(tmp_path / "out.parquet")
    assert frame.height == 1440
    assert summary is not None
    eng = replay_file(path, DAY, ReplayConfig())
    assert frame["n_msgs"].to_list() == eng.minute_msgs.tolist()
    assert eng.counts["deltas_before_snapshot"] > 0 and eng.counts["crossed_levels_removed"] > 0


def generate_parser():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.choices and "generate" in a.choices]
    return sub.choices["generate"]


@pytest.mark.parametrize("faults", [NEW_FAULTS])
def test_generate_cli_takes_the_new_faults(tmp_path, faults):
    argv = ["generate", "--start", DAY.isoformat(), "--days", "2", "--out", str(tmp_path / "cli"),
            "--duration-s", "30", "--seed", "5", "--faults", *faults]
    assert cli_main(argv) == 0
    helps = [a.help or "" for a in generate_parser()._actions if "--faults" in a.option_strings]
    assert len(helps) == 1 and all(name in helps[0] for name in FAULTS)  # the help names every fault
    expected = generate_days(DAY, 2, tmp_path / "lib", duration_s=30, seed=5, faults=faults)
    for path in expected:
        assert (tmp_path / "cli" / path.relative_to(tmp_path / "lib")).read_bytes() == path.read_bytes()
