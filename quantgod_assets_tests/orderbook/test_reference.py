"""The reference replay (the oracle) against hand-built message lists and the two real slices."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import math
import zipfile
from pathlib import Path

import pytest

from quantgod_assets.orderbook.reference import (
    COUNT_KEYS,
    ReferenceResult,
    read_lines,
    reference_replay,
)
from quantgod_assets.orderbook.schema import STAT_COLUMNS, level_columns

FIXTURES = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures" / "bybit"
XRP = FIXTURES / "2024-12-01_XRPUSDT_ob500.data.zip"
SPOT = FIXTURES / "2026-04-22_BTCUSDT_spot_ob200_first300s.jsonl.gz"

DAY = dt.date(2024, 1, 1)
T0 = int(dt.datetime(2024, 1, 1, tzinfo=dt.UTC).timestamp()) * 1000
DAY_MS = 86_400_000


def line(kind: str, ts: int, u: int, b=(), a=(), crlf: bool = False) -> str:
    message = {
        "topic": "orderbook.200.BTCUSDT",
        "type": kind,
        "ts": ts,
        "data": {"s": "BTCUSDT", "b": [list(x) for x in b], "a": [list(x) for x in a], "u": u, "seq": u * 7},
        "cts": ts - 3,
    }
    return json.dumps(message) + ("\r\n" if crlf else "")


def snap(ts: int, u: int, b=(), a=()) -> str:
    return line("snapshot", ts, u, b, a)


def delta(ts: int, u: int, b=(), a=()) -> str:
    return line("delta", ts, u, b, a)


BOOK_B = (("100", "1"), ("99", "2"), ("98", "3"))
BOOK_A = (("101", "4"), ("102", "5"), ("103", "6"))


def run(lines, **kwargs) -> ReferenceResult:
    kwargs.setdefault("out_levels", 5)
    kwargs.setdefault("capture_seconds", 5)
    return reference_replay(lines, DAY, **kwargs)


def sample(result: ReferenceResult, k: int = 0):
    return result.captured[k]


# --- the rules, one test each ---------------------------------------------------------------


def test_snapshot_sets_the_book_best_first():
    r = run([snap(T0 + 100, 1, BOOK_B, BOOK_A)])
    bids, asks = sample(r)
    assert bids == [(100.0, 1.0), (99.0, 2.0), (98.0, 3.0)]
    assert asks == [(101.0, 4.0), (102.0, 5.0), (103.0, 6.0)]
    assert r.second_valid[0]
    assert r.second_mid[0] == 100.5
    assert r.counts["n_snapshots"] == 1 and r.counts["n_messages"] == 1 and r.counts["n_lines"] == 1


def test_snapshot_clears_both_sides():
    r = run([
        snap(T0 + 100, 1, BOOK_B, BOOK_A),
        delta(T0 + 200, 2, b=[("97", "9")], a=[("104", "9")]),
        snap(T0 + 300, 3, b=[("90", "1")], a=[("110", "2")]),
    ])
    assert sample(r) == ([(90.0, 1.0)], [(110.0, 2.0)])
    assert r.counts["n_snapshots"] == 2 and r.counts["n_deltas"] == 1


def test_delta_inserts_replaces_and_deletes():
    r = run([
        snap(T0 + 100, 1, BOOK_B, BOOK_A),
        delta(T0 + 200, 2, b=[("99", "0"), ("100", "7"), ("97.5", "1.5")], a=[("102", "0")]),
    ])
    bids, asks = sample(r)
    assert bids == [(100.0, 7.0), (98.0, 3.0), (97.5, 1.5)]
    assert asks == [(101.0, 4.0), (103.0, 6.0)]


def test_delete_of_an_absent_level_is_ignored():
    r = run([
        snap(T0 + 100, 1, BOOK_B, BOOK_A),
        delta(T0 + 200, 2, b=[("50", "0")], a=[("150", "0"), ("101.5", "0")]),
    ])
    assert sample(r) == ([(100.0, 1.0), (99.0, 2.0), (98.0, 3.0)], [(101.0, 4.0), (102.0, 5.0), (103.0, 6.0)])
    assert r.counts["bad_lines"] == 0 and r.counts["crossed_messages"] == 0


def test_deltas_before_the_first_snapshot_are_skipped_and_counted():
    r = run([
        delta(T0 + 10, 5, b=[("100.5", "9")], a=[("100.7", "9")]),
        delta(T0 + 20, 6, b=[("99.5", "9")]),
        snap(T0 + 100, 1, BOOK_B, BOOK_A),
        delta(T0 + 200, 2, b=[("99.5", "8")]),
    ])
    assert r.counts["deltas_before_snapshot"] == 2
    assert r.counts["n_deltas"] == 1 and r.counts["n_messages"] == 4
    assert r.counts["seq_gaps"] == 0  # the skipped deltas' u take no part
    bids, asks = sample(r)
    assert bids == [(100.0, 1.0), (99.5, 8.0), (99.0, 2.0), (98.0, 3.0)]
    assert asks[0] == (101.0, 4.0)
    assert r.minute_rows[0]["n_msgs"] == 2  # only applied messages


def test_deltas_before_any_snapshot_leave_the_samples_invalid():
    r = run([delta(T0 + 10, 5, b=[("100", "9")], a=[("101", "9")])])
    assert r.counts["deltas_before_snapshot"] == 1
    assert not any(r.second_valid)
    assert sample(r) == ([], [])


def test_crossing_bids_only_message_removes_crossed_asks():
    r = run([
        snap(T0 + 100, 1, BOOK_B, BOOK_A),
        delta(T0 + 200, 2, b=[("102", "1.25")]),  # crosses 101 and equals 102
    ])
    bids, asks = sample(r)
    assert bids[0] == (102.0, 1.25)
    assert asks == [(103.0, 6.0)]
    assert r.counts["crossed_messages"] == 1
    assert r.counts["crossed_levels_removed"] == 2


def test_crossing_asks_only_message_removes_crossed_bids():
    r = run([
        snap(T0 + 100, 1, BOOK_B, BOOK_A),
        delta(T0 + 200, 2, a=[("98.5", "2")]),
    ])
    bids, asks = sample(r)
    assert bids == [(98.0, 3.0)]
    assert asks[0] == (98.5, 2.0)
    assert r.counts["crossed_messages"] == 1
    assert r.counts["crossed_levels_removed"] == 2


def test_crossing_both_sides_message_is_left_and_counted():
    r = run([
        snap(T0 + 100, 1, BOOK_B, BOOK_A),
        delta(T0 + 200, 2, b=[("101.5", "1")], a=[("99.5", "1")]),
        snap(T0 + 300, 3, b=[("100", "1")], a=[("100", "1"), ("99", "1")]),
    ])
    bids, asks = sample(r)
    assert bids == [(100.0, 1.0)]
    assert asks == [(99.0, 1.0), (100.0, 1.0)]
    assert r.counts["crossed_messages"] == 2
    assert r.counts["crossed_levels_removed"] == 0
    assert r.second_valid[0]  # crossed, but both sides present: the rules keep it valid
    assert r.second_mid[0] == 99.5


def test_a_non_crossing_message_on_a_crossed_book_is_counted_again():
    r = run([
        snap(T0 + 100, 1, b=[("100", "1")], a=[("100", "1")]),  # crossed (equal), left
        delta(T0 + 200, 2, b=[("90", "1")]),  # bids only: removes asks <= 100
    ])
    assert sample(r) == ([(100.0, 1.0), (90.0, 1.0)], [])
    assert r.counts["crossed_messages"] == 2
    assert r.counts["crossed_levels_removed"] == 1
    assert not r.second_valid[0]


def test_u_gaps_are_counted_and_the_replay_carries_on():
    r = run([
        snap(T0 + 100, 10, BOOK_B, BOOK_A),
        delta(T0 + 110, 11, b=[("97", "1")]),
        delta(T0 + 120, 13, b=[("96", "1")]),  # gap
        delta(T0 + 130, 14, b=[("95", "1")]),
        delta(T0 + 140, 14, b=[("94", "1")]),  # repeated u: a gap too
        snap(T0 + 150, 1, BOOK_B, BOOK_A),  # a snapshot resets u: no check
        delta(T0 + 160, 2, b=[("93", "1")]),
    ])
    assert r.counts["seq_gaps"] == 2
    assert r.counts["n_deltas"] == 5
    assert sample(r)[0][-1] == (93.0, 1.0)


def test_messages_before_the_day_are_applied_but_not_sampled():
    r = run([
        snap(T0 - 5_000, 1, BOOK_B, BOOK_A),
        delta(T0 - 100, 2, b=[("100", "0")]),
        delta(T0 + 500, 3, a=[("101", "9")]),
    ])
    assert r.counts["messages_before_day"] == 2
    assert r.counts["seq_gaps"] == 0
    assert sample(r) == ([(99.0, 2.0), (98.0, 3.0)], [(101.0, 9.0), (102.0, 5.0), (103.0, 6.0)])
    assert r.minute_rows[0]["n_msgs"] == 1
    assert sum(row["n_msgs"] for row in r.minute_rows) == 1


def test_messages_before_the_day_count_towards_silence():
    r = run([snap(T0 - 5_000, 1, BOOK_B, BOOK_A)], max_silence_s=7.0)
    # sample k at T0 + (k+1)*1000 is valid while (k+1)*1000 + 5000 <= 7000
    assert r.second_valid[:4] == [True, True, False, False]


def test_messages_at_or_after_the_day_end_are_not_applied():
    r = run(
        [
            snap(T0 + 100, 1, BOOK_B, BOOK_A),
            delta(T0 + DAY_MS - 1, 2, b=[("100", "5")]),
            delta(T0 + DAY_MS, 3, b=[("100", "6")]),
            snap(T0 + DAY_MS + 500, 1, b=[("1", "1")], a=[("2", "1")]),
        ],
        max_silence_s=86_400.0,
    )
    assert r.counts["messages_after_day"] == 2
    assert r.counts["n_snapshots"] == 1 and r.counts["n_deltas"] == 1 and r.counts["n_messages"] == 4
    last = r.minute_rows[1439]
    assert last["bid_sz_0"] == 5.0  # the delta at day_end - 1 is in the last sample, not the later ones
    assert last["n_msgs"] == 1
    assert r.minute_rows[1438]["bid_sz_0"] == 1.0
    assert all(r.second_valid)


def test_sample_k_holds_messages_with_ts_strictly_before_its_time():
    r = run([
        snap(T0 + 100, 1, BOOK_B, BOOK_A),
        delta(T0 + 1_000, 2, b=[("100", "5")]),  # exactly at sample 0's time: belongs to sample 1
        delta(T0 + 1_999, 3, b=[("100", "6")]),
        delta(T0 + 2_000, 4, b=[("100", "7")]),
    ])
    assert [r.captured[k][0][0][1] for k in range(4)] == [1.0, 6.0, 7.0, 7.0]


def test_validity_needs_a_recent_message():
    r = run([snap(T0 + 500, 1, BOOK_B, BOOK_A), delta(T0 + 10_000, 2, b=[("97", "1")])], max_silence_s=2.0)
    # (T0 + (k+1)*1000) - (T0 + 500) <= 2000  →  k <= 1; after the delta at 10.000 s: k + 1 - 10 <= 2
    valid = r.second_valid
    assert valid[:13] == [True, True, False, False, False, False, False, False, False, False, True, True, False]
    assert r.second_mid[2] != r.second_mid[2]  # NaN when invalid
    assert r.captured[2][0][0] == (100.0, 1.0)  # captured even when invalid
    assert sum(valid) == 4


def test_validity_needs_both_sides():
    r = run([snap(T0 + 500, 1, BOOK_B, ()), delta(T0 + 1_500, 2, a=[("101", "1")])])
    assert r.second_valid[:3] == [False, True, True]
    assert r.captured[0] == ([(100.0, 1.0), (99.0, 2.0), (98.0, 3.0)], [])


def test_levels_beyond_out_levels_are_cut_but_deep_levels_move_up():
    bids = [(str(100 - i), str(i + 1)) for i in range(8)]
    asks = [(str(101 + i), str(i + 1)) for i in range(8)]
    r = run(
        [
            snap(T0 + 100, 1, bids, asks),
            delta(T0 + 1_100, 2, b=[("100", "0"), ("99", "0"), ("98", "0"), ("97", "0")], a=[("101", "0")]),
        ],
        out_levels=3,
    )
    assert r.captured[0] == ([(100.0, 1.0), (99.0, 2.0), (98.0, 3.0)], [(101.0, 1.0), (102.0, 2.0), (103.0, 3.0)])
    assert r.captured[1] == ([(96.0, 5.0), (95.0, 6.0), (94.0, 7.0)], [(102.0, 2.0), (103.0, 3.0), (104.0, 4.0)])
    row = r.minute_rows[0]
    assert list(row) == [*level_columns(3), *STAT_COLUMNS, "n_msgs", "valid_seconds"]
    assert (row["bid_px_0"], row["bid_px_2"], row["ask_px_2"]) == (96.0, 94.0, 104.0)
    # imbalances see the whole book, not only the levels put out
    assert row["imbalance_20"] == ((5.0 + 6.0 + 7.0 + 8.0) - (2.0 + 3.0 + 4.0 + 5.0 + 6.0 + 7.0 + 8.0)) / (
        (5.0 + 6.0 + 7.0 + 8.0) + (2.0 + 3.0 + 4.0 + 5.0 + 6.0 + 7.0 + 8.0)
    )


def test_missing_levels_are_nan_in_the_minute_row():
    r = run([snap(T0 + 100, 1, BOOK_B[:1], BOOK_A)], out_levels=3)
    row = r.minute_rows[0]
    assert row["bid_px_0"] == 100.0
    assert math.isnan(row["bid_px_1"]) and math.isnan(row["bid_sz_2"])
    assert row["ask_px_2"] == 103.0


def test_mixed_decimal_notation_is_one_level():
    r = run([
        snap(T0 + 100, 1, b=[("76344.00", "0.50"), ("76343.9", "1")], a=[("76345", "2")]),
        delta(T0 + 200, 2, b=[("76344", "0.25")], a=[("76345.000", "3")]),
        delta(T0 + 1_200, 3, b=[("76344.0", "0")]),
        delta(T0 + 2_200, 4, b=[("76343.90", "0.000")]),  # a zero size written "0.000" deletes
    ])
    assert r.captured[0] == ([(76344.0, 0.25), (76343.9, 1.0)], [(76345.0, 3.0)])
    assert r.captured[1] == ([(76343.9, 1.0)], [(76345.0, 3.0)])
    assert r.captured[2] == ([], [(76345.0, 3.0)])


def test_minute_statistics_by_hand():
    r = run([
        snap(T0 + 100, 1, b=[("100", "1"), ("99", "3")], a=[("102", "3"), ("103", "1")]),
        delta(T0 + 10_500, 2, b=[("101", "2")]),  # mid 101.5 from sample 10 on
        delta(T0 + 20_500, 3, a=[("102", "0")]),  # mid 102 from sample 20 on
        delta(T0 + 58_000, 4, a=[("102.5", "1")]),  # mid 101.75 from sample 58 on
    ])
    row = r.minute_rows[0]
    mids = [101.0] * 10 + [101.5] * 10 + [102.0] * 38 + [101.75] * 2
    assert r.second_mid[:60] == mids
    assert (row["mid_open"], row["mid_high"], row["mid_low"], row["mid_close"]) == (101.0, 102.0, 101.0, 101.75)
    assert row["spread"] == 1.5
    assert row["micro_price"] == (101.0 * 1.0 + 102.5 * 2.0) / (2.0 + 1.0)
    micro = [(100.0 * 3 + 102.0 * 1) / 4] * 10 + [(101.0 * 3 + 102.0 * 2) / 5] * 10
    micro += [(101.0 * 1 + 103.0 * 2) / 3] * 38 + [(101.0 * 1 + 102.5 * 2) / 3] * 2
    total = 0.0
    for x in micro:
        total += x
    assert row["micro_price_mean"] == total / 60
    spreads = [2.0] * 10 + [1.0] * 10 + [2.0] * 38 + [1.5] * 2
    assert row["spread_mean"] == sum(spreads) / 60
    assert row["imbalance_1"] == (2.0 - 1.0) / 3.0
    assert row["imbalance_5"] == ((2.0 + 1.0 + 3.0) - (1.0 + 1.0)) / ((2.0 + 1.0 + 3.0) + (1.0 + 1.0))
    assert row["imbalance_200"] == row["imbalance_5"]
    assert row["n_msgs"] == 4 and row["valid_seconds"] == 60
    # minute 1: still valid until the silence runs out (58.000 + 60 s → sample 117 at 118 s is the last)
    assert r.minute_rows[1]["valid_seconds"] == 58
    assert r.minute_rows[1]["n_msgs"] == 0
    assert math.isnan(r.minute_rows[1]["micro_price"]) and math.isnan(r.minute_rows[1]["bid_px_0"])
    assert r.minute_rows[1]["mid_close"] == 101.75
    assert math.isnan(r.minute_rows[2]["mid_open"]) and r.minute_rows[2]["valid_seconds"] == 0


def test_bad_lines_and_blank_lines_and_crlf():
    r = run([
        (snap(T0 + 100, 1, BOOK_B, BOOK_A) + "\r\n").encode(),
        b"",
        b"\r\n",
        b"{not json",
        b'{"type":"other","ts":1,"data":{}}',
        line("delta", T0 + 200, 2, b=[("97", "1")], crlf=True),
    ])
    assert r.counts["n_lines"] == 4
    assert r.counts["bad_lines"] == 2
    assert r.counts["n_messages"] == 2
    assert sample(r)[0][-1] == (97.0, 1.0)


def test_counts_have_the_agreed_keys():
    r = run([snap(T0 + 100, 1, BOOK_B, BOOK_A)])
    assert tuple(r.counts) == COUNT_KEYS
    assert len(r.second_valid) == 86_400 and len(r.second_mid) == 86_400 and len(r.minute_rows) == 1440
    assert len(r.captured) == 5


# --- reading files ------------------------------------------------------------------------------


def test_read_lines_plain_gz_zip(tmp_path):
    body = b'{"a":1}\r\n{"b":2}\r\n{"c":3}'
    plain = tmp_path / "x.data"
    plain.write_bytes(body)
    gz = tmp_path / "x.jsonl.gz"
    gz.write_bytes(gzip.compress(body))
    zp = tmp_path / "x.data.zip"
    with zipfile.ZipFile(zp, "w") as archive:
        archive.writestr("x.data", body)
    for path in (plain, gz, zp):
        assert list(read_lines(path)) == [b'{"a":1}', b'{"b":2}', b'{"c":3}']


# --- the real slices --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def xrp_lines() -> list[bytes]:
    if not XRP.is_file():
        pytest.skip(f"fixture missing: {XRP}")
    return list(read_lines(XRP))


@pytest.fixture(scope="module")
def spot_lines() -> list[bytes]:
    if not SPOT.is_file():
        pytest.skip(f"fixture missing: {SPOT}")
    return list(read_lines(SPOT))


def test_xrp_ob500_keeps_500_levels_and_puts_out_200(xrp_lines):
    day = dt.date(2024, 12, 1)
    assert len(xrp_lines) == 50
    full = reference_replay(xrp_lines, day, out_levels=500, capture_seconds=6)
    cut = reference_replay(xrp_lines, day, out_levels=200, capture_seconds=6)
    assert full.counts == cut.counts
    assert full.counts["n_lines"] == 50 and full.counts["bad_lines"] == 0
    assert full.counts["n_snapshots"] == 1 and full.counts["n_deltas"] == 49
    assert full.counts["seq_gaps"] == 0 and full.counts["crossed_messages"] == 0
    assert full.counts["deltas_before_snapshot"] == 0 and full.counts["messages_before_day"] == 0
    for k in range(6):
        bids, asks = full.captured[k]
        assert len(bids) == 500 and len(asks) == 500  # the window holds 500 a side
        assert cut.captured[k] == (bids[:200], asks[:200])
        assert all(bids[i][0] > bids[i + 1][0] for i in range(499))
        assert all(asks[i][0] < asks[i + 1][0] for i in range(499))
        assert bids[0][0] < asks[0][0]
    # the sample after the last line (00:00:05.490) is sample 5; samples 0-60 are valid
    assert cut.second_valid[:66] == [True] * 65 + [False]
    row = cut.minute_rows[0]
    assert list(row) == [*level_columns(200), *STAT_COLUMNS, "n_msgs", "valid_seconds"]
    assert row["n_msgs"] == 50 and row["valid_seconds"] == 60
    assert row["bid_px_199"] == full.captured[5][0][199][0]
    assert row["ask_sz_199"] == full.captured[5][1][199][1]
    assert row["imbalance_200"] == full.minute_rows[0]["imbalance_200"]


def test_spot_2026_five_full_minutes(spot_lines):
    day = dt.date(2026, 4, 22)
    assert len(spot_lines) == 2719
    r = reference_replay(spot_lines, day, out_levels=200, capture_seconds=300)
    c = r.counts
    assert c["n_lines"] == 2719 and c["n_messages"] == 2719 and c["bad_lines"] == 0
    assert c["n_snapshots"] == 1 and c["n_deltas"] == 2718
    assert c["seq_gaps"] == 0 and c["deltas_before_snapshot"] == 0
    assert c["messages_before_day"] == 0 and c["messages_after_day"] == 0
    assert c["crossed_messages"] == 0
    assert [r.minute_rows[m]["valid_seconds"] for m in range(5)] == [60] * 5
    # the last message is at 00:04:59.969: valid for 60 s more, samples 300..358
    assert r.minute_rows[5]["valid_seconds"] == 59
    assert all(row["valid_seconds"] == 0 for row in r.minute_rows[6:])
    assert sum(row["n_msgs"] for row in r.minute_rows[:5]) == 2719
    for m in range(5):
        row = r.minute_rows[m]
        assert not math.isnan(row["bid_px_199"]) and not math.isnan(row["ask_px_199"])
        assert row["bid_px_0"] < row["ask_px_0"]
        assert row["mid_close"] == (row["bid_px_0"] + row["ask_px_0"]) / 2
        assert row["spread"] == row["ask_px_0"] - row["bid_px_0"]
        assert row["mid_low"] <= row["mid_open"] <= row["mid_high"]
        assert -1.0 <= row["imbalance_200"] <= 1.0
        bids, _asks = r.captured[60 * m + 59]
        assert [px for px, _ in bids] == [row[f"bid_px_{i}"] for i in range(len(bids))]
    assert all(len(r.captured[k][0]) == 200 and len(r.captured[k][1]) == 200 for k in range(300))
    assert math.isnan(r.minute_rows[5]["bid_px_0"])  # minute 5's close sample (359) is stale
