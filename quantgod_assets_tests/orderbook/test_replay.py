"""The numba engine, rule by rule, on hand-built message streams."""

from __future__ import annotations

import datetime as dt
import json
import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantgod_assets.orderbook import _kernel as kernel
from quantgod_assets.orderbook._kernel import _parse_decimal
from quantgod_assets.orderbook.reader import OrderBookInputError
from quantgod_assets.orderbook.replay import ReplayConfig, day_start_ms, replay_stream

from ..builders import msg

DAY = dt.date(2025, 3, 14)
T0 = day_start_ms(DAY)


def replay(lines, levels=5, capture=5, **config):
    text = "\r\n".join(lines) + "\r\n"
    return replay_stream([text.encode()], DAY, ReplayConfig(out_levels=levels, capture_seconds=capture, **config))


def book_at(result, second):
    """(bids, asks) of one captured sample as lists of (price, size), best first."""
    levels = result.captured[second]
    bids = [(p, s) for p, s in zip(levels[0], levels[1]) if not math.isnan(p)]
    asks = [(p, s) for p, s in zip(levels[2], levels[3]) if not math.isnan(p)]
    return bids, asks


SNAP = msg("snapshot", T0 + 100, bids=[("100.0", "1"), ("99.9", "2")], asks=[("100.1", "3"), ("100.2", "4")], u=1)


def test_snapshot_clears_and_sets_both_sides():
    r = replay([SNAP, msg("snapshot", T0 + 200, bids=[("50", "1")], asks=[("51", "1")], u=1)])
    assert book_at(r, 0) == ([(50.0, 1.0)], [(51.0, 1.0)])
    assert r.counts["n_snapshots"] == 2


def test_delta_sets_replaces_and_deletes():
    r = replay([SNAP, msg("delta", T0 + 200, bids=[("100.0", "5"), ("99.9", "0"), ("99.8", "7")], u=2)])
    assert book_at(r, 0)[0] == [(100.0, 5.0), (99.8, 7.0)]


def test_deleting_an_absent_level_is_ignored():
    r = replay([SNAP, msg("delta", T0 + 200, asks=[("100.5", "0")], u=2)])
    assert book_at(r, 0)[1] == [(100.1, 3.0), (100.2, 4.0)]
    assert r.counts["seq_gaps"] == 0


def test_deltas_before_the_first_snapshot_are_skipped_and_counted():
    early = msg("delta", T0 + 50, bids=[("101", "9")], u=0)
    r = replay([early, SNAP])
    assert r.counts["deltas_before_snapshot"] == 1
    assert book_at(r, 0)[0][0] == (100.0, 1.0)


def test_trimmed_and_fixed_decimals_are_the_same_level():
    snap = msg("snapshot", T0 + 100, bids=[("76344.00", "1")], asks=[("76345", "1")], u=1)
    r = replay([snap, msg("delta", T0 + 200, bids=[("76344", "0.50")], u=2)])
    assert book_at(r, 0)[0] == [(76344.0, 0.5)]


def test_full_depth_is_kept_and_deep_levels_move_into_the_output():
    bids = [(f"{100 - i}", "1") for i in range(8)]
    snap = msg("snapshot", T0 + 100, bids=bids, asks=[("101", "1")], u=1)
    delete_top = msg("delta", T0 + 1500, bids=[("100", "0"), ("99", "0"), ("98", "0")], u=2)
    r = replay([snap, delete_top], levels=3)
    assert [p for p, _ in book_at(r, 0)[0]] == [100.0, 99.0, 98.0]
    assert [p for p, _ in book_at(r, 1)[0]] == [97.0, 96.0, 95.0]


def test_crossing_bid_removes_the_asks_it_crosses():
    cross = msg("delta", T0 + 200, bids=[("100.15", "1")], u=2)
    r = replay([SNAP, cross])
    assert book_at(r, 0)[1] == [(100.2, 4.0)]
    assert r.counts["crossed_messages"] == 1
    assert r.counts["crossed_levels_removed"] == 1


def test_crossing_ask_removes_the_bids_it_crosses():
    r = replay([SNAP, msg("delta", T0 + 200, asks=[("99.9", "1")], u=2)])
    assert book_at(r, 0)[0] == []
    assert r.counts["crossed_levels_removed"] == 2
    assert not r.second_valid[0]  # an empty side is not a valid sample


def test_a_message_touching_both_sides_leaves_a_crossed_book():
    cross = msg("delta", T0 + 200, bids=[("100.3", "1")], asks=[("100.25", "1")], u=2)
    r = replay([SNAP, cross])
    bids, asks = book_at(r, 0)
    assert bids[0] == (100.3, 1.0) and asks[0] == (100.1, 3.0)
    assert r.counts["crossed_messages"] == 1 and r.counts["crossed_levels_removed"] == 0


def test_u_jumps_are_counted_and_replay_carries_on():
    r = replay([SNAP, msg("delta", T0 + 200, bids=[("99", "1")], u=2),
                msg("delta", T0 + 300, bids=[("98", "1")], u=7),
                msg("snapshot", T0 + 400, bids=[("99", "1")], asks=[("101", "1")], u=1),
                msg("delta", T0 + 500, bids=[("98", "1")], u=2)])
    assert r.counts["seq_gaps"] == 1
    assert book_at(r, 0)[0] == [(99.0, 1.0), (98.0, 1.0)]


def test_messages_are_bucketed_by_ts_not_by_file():
    before = msg("snapshot", T0 - 30_000, bids=[("100", "1")], asks=[("101", "1")], u=1)
    last = msg("delta", T0 + 86_399_500, bids=[("100", "2")], u=2)
    after = msg("delta", T0 + 86_400_000, bids=[("100.5", "1")], u=3)
    r = replay([before, last, after])
    assert r.counts["messages_before_day"] == 1 and r.counts["messages_after_day"] == 1
    assert r.minute_msgs.sum() == 1 and r.minute_msgs[1439] == 1
    assert r.second_valid[0]  # applied before the day, sampled from the day's first second
    assert r.minute_levels[1439, 0, 0] == 100.0 and r.minute_levels[1439, 1, 0] == 2.0


def test_sample_k_holds_messages_strictly_before_its_end():
    on_boundary = msg("delta", T0 + 1000, bids=[("100.0", "9")], u=2)
    r = replay([SNAP, on_boundary])
    assert book_at(r, 0)[0][0] == (100.0, 1.0)
    assert book_at(r, 1)[0][0] == (100.0, 9.0)


def test_a_sample_is_invalid_after_max_silence():
    r = replay([SNAP], capture=0, max_silence_s=10)
    assert r.second_valid[:10].all()  # sample 9 ends 9.9 s after the snapshot
    assert not r.second_valid[10:].any()
    assert r.valid_share == pytest.approx(10 / 86_400)


def test_minute_close_and_statistics():
    deltas = [msg("delta", T0 + 1000 * s + 500, bids=[("100.0", str(s + 1))], u=s + 2) for s in range(60)]
    r = replay([SNAP, *deltas], capture=0, levels=2)
    assert r.minute_levels[0, :, 0].tolist() == [100.0, 60.0, 100.1, 3.0]
    assert r.minute_levels[0, :, 1].tolist() == [99.9, 2.0, 100.2, 4.0]
    expected_imbalance_1 = (60.0 - 3.0) / (60.0 + 3.0)
    assert r.minute_imbalance[0, 0] == expected_imbalance_1
    assert r.second_micro[59] == (100.0 * 3.0 + 100.1 * 60.0) / 63.0


@pytest.mark.parametrize("order", [("topic", "ts", "type", "data", "cts"), ("topic", "type", "ts", "data", "cts"),
                                   ("data", "cts", "ts", "type", "topic")])
def test_either_key_order(order):
    lines = [msg("snapshot", T0 + 100, bids=[("100", "1")], asks=[("101", "1")], u=1, key_order=order),
             msg("delta", T0 + 200, bids=[("100", "3")], u=2, key_order=order)]
    assert book_at(replay(lines), 0)[0] == [(100.0, 3.0)]


def test_whitespace_and_lf_only_lines_parse_the_same():
    spaced = json.dumps(json.loads(SNAP), indent=None)  # ", " and ": " separators
    r1 = replay([SNAP])
    r2 = replay_stream([(spaced + "\n").encode()], DAY, ReplayConfig(out_levels=5, capture_seconds=5))
    np.testing.assert_array_equal(r1.captured, r2.captured)


def test_chunk_boundaries_anywhere_give_the_same_replay():
    lines = [SNAP] + [msg("delta", T0 + 150 * i, bids=[(f"{99 + (i % 7) / 10:.1f}", str(i % 3))], u=i + 1)
                      for i in range(2, 60)]
    data = ("\r\n".join(lines)).encode()
    whole = replay_stream([data], DAY, ReplayConfig(out_levels=5, capture_seconds=10))
    rng = np.random.default_rng(3)
    cuts = np.sort(rng.choice(np.arange(1, len(data)), size=40, replace=False))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
    split = replay_stream(pieces, DAY, ReplayConfig(out_levels=5, capture_seconds=10))
    np.testing.assert_array_equal(whole.captured, split.captured)
    assert whole.counts == split.counts


def test_a_chunk_is_released_once_parsed_and_never_read_after():
    # the pool refills a released chunk's buffer at once: scribbling over it on release must
    # leave the replay exactly as it was (lines cut by chunk ends included)
    lines = [SNAP] + [msg("delta", T0 + 150 * i, bids=[(f"{99 + (i % 7) / 10:.1f}", str(i % 3))], u=i + 1)
                      for i in range(2, 200)]
    data = ("\r\n".join(lines)).encode()
    config = ReplayConfig(out_levels=5, capture_seconds=30)
    whole = replay_stream([data], DAY, config)
    pieces = [bytearray(data[a:a + 97]) for a in range(0, len(data), 97)]
    released = []

    def scribble(chunk):
        released.append(id(chunk.obj))
        chunk[:] = b"}" * len(chunk)

    split = replay_stream([memoryview(piece) for piece in pieces], DAY, config, release=scribble)
    np.testing.assert_array_equal(whole.captured, split.captured)
    assert whole.counts == split.counts
    assert sorted(released) == sorted(id(piece) for piece in pieces)


@given(st.integers(min_value=0, max_value=10**15 - 1), st.integers(min_value=0, max_value=15),
       st.sampled_from(["", "0", "00"]))
@settings(max_examples=500, deadline=None)
def test_parsed_numbers_equal_python_float_bit_for_bit(mantissa, frac_digits, trailing):
    digits = str(mantissa).rjust(frac_digits + 1, "0")
    text = digits[: len(digits) - frac_digits] + ("." + digits[len(digits) - frac_digits:] if frac_digits else "")
    if frac_digits:
        text += trailing
    buf = np.frombuffer(f'"{text}"'.encode(), dtype=np.uint8)
    value, end, status = _parse_decimal(buf, 0, buf.shape[0])
    assert status == 0 and end == buf.shape[0]
    assert value.hex() == float(text).hex(), text


@pytest.mark.parametrize("spelling", [
    '[["100.5","2"],["99","0.25"]]',  # compact: the fast path
    '[ ["100.5" ,"2"] , ["99", "0.25" ] ]',  # blanks anywhere: the general path
    '[["100.5","2"] ,[ "99","0.25"]]',  # one of each in the same side
    '[[100.5, 2], ["99", 0.25]]',  # bare numbers
    '[["100.50","2.0"],["0099","0.250"]]',  # trailing and leading zeros
])
def test_every_spelling_of_levels_parses_the_same(spelling):
    line = (f'{{"topic":"orderbook.200.X","ts":{T0 + 100},"type":"snapshot","data":{{"s":"X","b":{spelling},'
            '"a":[["101","1"]],"u":1}}')
    assert book_at(replay([line]), 0)[0] == [(100.5, 2.0), (99.0, 0.25)]


@pytest.mark.parametrize("level", ['["100.5","2"x]', '["100.5""2"]', '["100.5","2"', '["1e2","2"]',
                                   '["100.5",,"2"]', '["","2"]', '[".5","2"x]'])
def test_a_level_that_leaves_the_compact_shape_badly_is_an_error(level):
    line = (f'{{"topic":"orderbook.200.X","ts":{T0 + 100},"type":"snapshot","data":{{"s":"X","b":[{level}],'
            '"a":[["101","1"]],"u":1}}')
    with pytest.raises(OrderBookInputError, match="line 1, column"):
        replay([line])


@given(st.lists(st.tuples(st.integers(0, 10**9 - 1), st.integers(0, 6), st.integers(0, 10**6), st.integers(0, 8)),
                min_size=1, max_size=20))
@settings(max_examples=200, deadline=None)
def test_compact_levels_equal_python_float_bit_for_bit(raw):
    def text(mantissa, frac_digits):
        digits = str(mantissa).rjust(frac_digits + 1, "0")
        return digits[: len(digits) - frac_digits] + ("." + digits[len(digits) - frac_digits:] if frac_digits else "")
    levels = [(text(pm, pf), text(sm, sf)) for pm, pf, sm, sf in raw]
    body = ",".join(f'["{px}","{sz}"]' for px, sz in levels).encode()
    buf = np.frombuffer(b"[" + body + b"]", dtype=np.uint8)
    px = np.zeros((2, 32))
    sz = np.zeros((2, 32))
    n, end, status = kernel._parse_levels(buf, 0, buf.shape[0], px, sz, 1, 3, 29)
    assert (n, end, status) == (len(levels), buf.shape[0], 0)
    assert [(a.hex(), b.hex()) for a, b in zip(px[1, 3:3 + n], sz[1, 3:3 + n])] == \
        [(float(a).hex(), float(b).hex()) for a, b in levels]


def test_numbers_beyond_exact_parsing_fail_clearly():
    line = msg("snapshot", T0 + 100, bids=[("100.1234567890123456", "1")], asks=[("101", "1")], u=1)
    with pytest.raises(OrderBookInputError, match=r"line 1.*significant digits"):
        replay([line])


def test_a_malformed_line_names_the_line():
    lines = [SNAP, '{"topic":"orderbook.200.BTCUSDT","ts":1,"type":"del', msg("delta", T0 + 300, u=2)]
    with pytest.raises(OrderBookInputError, match=r"<stream>: line 2, column \d+"):
        replay(lines)


def test_skip_bad_lines_counts_them():
    lines = [SNAP, "not json at all", msg("delta", T0 + 300, bids=[("100", "4")], u=2)]
    r = replay(lines, skip_bad_lines=True)
    assert r.counts["bad_lines"] == 1
    assert book_at(r, 0)[0][0] == (100.0, 4.0)


def test_an_empty_stream_and_a_stream_without_snapshot_fail():
    with pytest.raises(OrderBookInputError, match="no messages"):
        replay_stream([b"\r\n"], DAY)
    with pytest.raises(OrderBookInputError, match="no snapshot"):
        replay([msg("delta", T0 + 100, bids=[("1", "1")], u=5)])


def test_a_level_too_many_for_one_message_fails_clearly():
    line = msg("snapshot", T0 + 100, bids=[(str(i + 1), "1") for i in range(16385)], asks=[], u=1)
    with pytest.raises(OrderBookInputError, match="more price levels"):
        replay([line])


def test_a_full_side_drops_its_deepest_level_and_counts_it():
    snap = msg("snapshot", T0 + 100, bids=[("100", "1"), ("99", "1"), ("98", "1")], asks=[("101", "1")], u=1)
    better = msg("delta", T0 + 200, bids=[("99.5", "2")], u=2)
    deeper = msg("delta", T0 + 300, bids=[("90", "2")], u=3)
    r = replay([snap, better, deeper], levels=3, book_capacity=3)
    assert book_at(r, 0)[0] == [(100.0, 1.0), (99.5, 2.0), (99.0, 1.0)]
    assert r.counts["book_overflow_levels"] == 2


@given(st.lists(st.tuples(st.integers(0, 60), st.sampled_from(["0", "1", "2.5"]), st.booleans()),
                min_size=1, max_size=400))
@settings(max_examples=200, deadline=None)
def test_the_book_matches_a_dict_after_any_updates(updates):
    """Inserts and deletes at every depth, through recentering, against a plain dict."""
    snap = msg("snapshot", T0 + 100, bids=[("1000", "1")], asks=[("2000", "1")], u=1)
    lines, bids, asks = [snap], {1000.0: 1.0}, {2000.0: 1.0}
    for u, (tick, size, is_bid) in enumerate(updates, start=2):
        price = (900 + tick) if is_bid else (2000 + tick)
        lines.append(msg("delta", T0 + 200, bids=[(str(price), size)] if is_bid else [],
                         asks=[] if is_bid else [(str(price), size)], u=u))
        book = bids if is_bid else asks
        if size == "0":
            book.pop(float(price), None)
        else:
            book[float(price)] = float(size)
    got_bids, got_asks = book_at(replay(lines, levels=100, book_capacity=200), 0)
    assert got_bids == sorted(bids.items(), reverse=True)
    assert got_asks == sorted(asks.items())


@pytest.mark.parametrize("rising", [True, False])
def test_a_sliding_window_recentres_the_side_arrays(rising):
    """A book that drifts for many levels walks off one end of its array and is moved back."""
    step = 1 if rising else -1
    snap = msg("snapshot", T0 + 100, bids=[("1000", "1")], asks=[("5000", "1")], u=1)
    lines = [snap]
    for t in range(1, 40):
        update = [(str(1000 + step * t), str(t)), (str(1000 + step * (t - 3)), "0")]
        lines.append(msg("delta", T0 + 200, bids=update, u=t + 1))
    bids = book_at(replay(lines, levels=4, book_capacity=4), 0)[0]
    expected = sorted(((1000.0 + step * t, float(t)) for t in range(37, 40)), reverse=True)
    assert bids == expected


@pytest.mark.parametrize("text", ["1.50000000000000000000", "100000000000000000000", "0.000000000000000000001",
                                  "000123.4500", "0", "0.000", "-2.5", "9007199254740993"])
def test_zeros_anywhere_parse_exactly(text):
    # quoted, as Bybit writes numbers: bare, "000123.4500" is no JSON number (test_strict_input)
    buf = np.frombuffer(f'"{text}"'.encode(), dtype=np.uint8)
    value, end, status = _parse_decimal(buf, 0, buf.shape[0])
    assert status == 0 and end == buf.shape[0]
    assert value.hex() == float(text).hex()


@given(st.integers(min_value=0, max_value=10**14 - 1), st.integers(min_value=0, max_value=9),
       st.sampled_from(["", "0", "00"]), st.binary(min_size=24, max_size=24))
@settings(max_examples=500, deadline=None)
def test_bytes_after_a_number_do_not_change_it(mantissa, frac_digits, trailing, after):
    """The number sits inside a longer buffer, as in a line: what follows must not matter."""
    digits = str(mantissa).rjust(frac_digits + 1, "0")
    text = digits[: len(digits) - frac_digits] + ("." + digits[len(digits) - frac_digits:] if frac_digits else "")
    if frac_digits:
        text += trailing
    quoted = f'"{text}"'.encode()
    buf = np.frombuffer(quoted + after, dtype=np.uint8)
    value, end, status = _parse_decimal(buf, 0, len(quoted))
    assert status == 0 and end == len(quoted)
    assert value.hex() == float(text).hex(), text


@pytest.mark.parametrize("text", ['"12a.5"', '"1.2.3"', '".5"', '"5."', '"123456789.5"', '"1.12345678"', '"7'])
def test_odd_numbers_fall_back_or_fail_cleanly(text):
    buf = np.frombuffer(text.encode() + b"\x00" * 24, dtype=np.uint8)
    value, end, status = _parse_decimal(buf, 0, len(text))
    try:
        expected = float(json.loads(text))
    except ValueError:
        assert status != 0
        return
    assert status == 0 and value == expected and end == len(text)


def test_the_galloping_search_agrees_with_the_whole_side_search_from_any_hint():
    # _find_from must give _find's answer whatever the hint: a good one (at or above the
    # answer), a stale one below it (an out-of-order message), or the top of the side

    from quantgod_assets.orderbook import _kernel as kernel

    rng = random.Random(5)
    for _ in range(300):
        n = rng.randint(0, 60)
        keys = sorted(rng.sample(range(-500, 500), n))
        lo = rng.randint(0, 5)
        levels = np.zeros((lo + n + 5, 2))
        levels[lo:lo + n, 0] = keys
        hi = lo + n
        for _ in range(20):
            key = float(rng.randint(-520, 520)) + rng.choice((0.0, 0.5))
            hint = rng.randint(lo, hi)
            expected = kernel._find(levels, lo, hi, key)
            assert kernel._find_from(levels, lo, hi, hint, key) == expected, (keys, lo, hint, key)
