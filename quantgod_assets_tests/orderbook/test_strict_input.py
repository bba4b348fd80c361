"""What the engine refuses: the reference's bad lines, over-long lines, another symbol, another day.

The engine (`_kernel.parse_batch`) and the reference (`reference._parse`) must make the same
accept/reject decision on every line; mutated real-shaped lines (hypothesis) hold them to it.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
import re
import tracemalloc
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantgod_assets.orderbook import _kernel as k
from quantgod_assets.orderbook import reference
from quantgod_assets.orderbook.etl import convert_day
from quantgod_assets.orderbook.reader import OrderBookInputError
from quantgod_assets.orderbook.replay import ReplayConfig, replay_stream

from ..builders import ENGINE_DAY as DAY
from ..builders import ENGINE_T0 as T0
from ..builders import assert_engine_matches, msg

SNAP = msg("snapshot", T0 + 100, bids=[("100.0", "1"), ("99.9", "2")], asks=[("100.1", "3")], u=1)


def engine_accepts(line: str | bytes) -> bool:
    """The engine's decision on one line alone: parse_batch with skip_bad_lines."""
    raw = line.encode() if isinstance(line, str) else line
    buf = np.frombuffer(raw, dtype=np.uint8)
    state = np.zeros(k.STATE_SIZE, dtype=np.int64)
    state[k.S_MAX_LINE] = 1 << 40
    symbol = np.zeros((2, 64), dtype=np.uint8)
    header = np.zeros(k.BATCH_HEADER, dtype=np.int64)
    n_msgs, n_levels = 4, 4096
    _, stop = k.parse_batch(
        buf, 0, buf.shape[0], True, state, symbol, header, np.zeros(n_msgs, np.int64),
        np.zeros(n_msgs, np.int64), np.zeros(n_msgs, np.int8), np.zeros((n_msgs, 2), np.int64),
        np.zeros((2, n_levels), np.float64), np.zeros((2, n_levels), np.float64), 2048, True,
    )
    assert stop == k.STOP_NEED_INPUT
    return bool(header[k.B_MESSAGES] == 1)


def reference_accepts(line: str | bytes) -> bool:
    return reference._parse(line) is not None


def replay(lines, **config):
    text = "\r\n".join(lines) + "\r\n"
    return replay_stream([text.encode()], DAY, ReplayConfig(out_levels=5, capture_seconds=3, **config))


# --- the reproduced failures, one by one ------------------------------------------------------------

REFUSED = {
    "ts past int64": SNAP.replace(f'"ts":{T0 + 100}', '"ts":9223372036854775808'),
    "ts far past int64": SNAP.replace(f'"ts":{T0 + 100}', '"ts":18446744073709551716'),
    "u past int64": SNAP.replace('"u":1', '"u":9223372036854775808'),
    "u below int64": SNAP.replace('"u":1', '"u":-9223372036854775809'),
    "quoted ts": SNAP.replace(f'"ts":{T0 + 100}', f'"ts":"{T0 + 100}"'),
    "quoted u": SNAP.replace('"u":1', '"u":"1"'),
    "ts with a leading zero": SNAP.replace(f'"ts":{T0 + 100}', f'"ts":0{T0 + 100}'),
    "NUL between tokens": SNAP.replace('"type":', '"type":\x00'),
    "NUL before a key": SNAP.replace(',"data"', ',\x00"data"'),
    "vertical tab between tokens": SNAP.replace('"b":', '"b":\x0b'),
    "NUL inside a string": SNAP.replace("orderbook.", "order\x00book."),
    "bad escape": SNAP.replace('"cts"', '"c\\xts"'),
    "bare word in an unread key": SNAP.replace('"cts":', '"cts":abc,"x":'),
    "trailing comma in an unread value": SNAP.replace('"seq":7', '"seq":[1,2,]'),
    "NaN in an unread key": SNAP.replace('"seq":7', '"seq":NaN'),
    "no u": SNAP.replace(',"u":1', ""),
    "null levels": SNAP.replace('"a":[["100.1","3"]]', '"a":null'),
    "three-element level": SNAP.replace('["100.1","3"]', '["100.1","3","1"]'),
    "exponent in a price": SNAP.replace('"100.1"', '"1.001e2"'),
    "NaN as a size": SNAP.replace('"100.1","3"', '"100.1","NaN"'),
    "bare .5": SNAP.replace('"100.1","3"', '"100.1",.5'),
    "bare 05": SNAP.replace('"100.1","3"', '"100.1",05'),
}
ACCEPTED = {
    "int64 max ts": SNAP.replace(f'"ts":{T0 + 100}', '"ts":9223372036854775807'),
    "negative u": SNAP.replace('"u":1', '"u":-5'),
    "blanks of JSON": SNAP.replace('"type":', '"type":\t \r'),
    "escapes in an unread string": SNAP.replace('"cts":', '"x":"a\\"\\u00e9\\n","cts":'),
    "nested unread value": SNAP.replace('"seq":7', '"seq":[1,{"a":[true,false,null,-1.5e3]},{}]'),
    "bare numbers": SNAP.replace('"100.1","3"', "100.1, 3"),
    "no a": SNAP.replace(',"a":[["100.1","3"]]', ""),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_the_engine_refuses_what_the_reference_refuses(name):
    line = REFUSED[name]
    assert not reference_accepts(line), name
    assert not engine_accepts(line), name
    with pytest.raises(OrderBookInputError, match=r"<stream>: line 2, column \d+: "):
        replay([SNAP, line])
    r = replay([SNAP, line], skip_bad_lines=True)
    assert r.counts["bad_lines"] == 1 and r.counts["n_lines"] == 2


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_the_engine_accepts_what_the_reference_accepts(name):
    line = ACCEPTED[name]
    assert reference_accepts(line), name
    assert engine_accepts(line), name


def test_a_quoted_ts_names_the_rule():
    with pytest.raises(OrderBookInputError, match=r"line 1, column \d+: .*bare JSON integer within int64"):
        replay([REFUSED["quoted ts"]])


# --- mutated lines: the same decision, always ------------------------------------------------------

TS_TOKENS = ["9223372036854775807", "9223372036854775808", "18446744073709551621", "-9223372036854775807",
             "-9223372036854775808", '"1709596800100"', "01709596800100", "0", "-0", "1709596800100.0",
             "1.7e12", "true", "null", '"x"', "[1]", "99999999999999999999999", "-", "1709596800100 "]
NUMBER_TOKENS = ['"NaN"', '"1e2"', "1e2", '"-1"', '"-0"', "-0", '" 1"', '"1_0"', "null", "true", "[1]",
                 '"1.2.3"', '".5"', ".5", "5.", "05", '"05"', "0.5", "100", '"100.1234567890123456789"',
                 "100.1234567890123456789", '"0.00000000000000000000001"', '"12345678901234567890"', "NaN",
                 "Infinity", "-Infinity", '"5."', '"-.5"', '"0000000.1"', '"9007199254740993.5"', '""', '"-"']
LEVEL_TOKENS = ['["1","2","3"]', '["1"]', "[]", "{}", '"x"', "null", '[ "1" , "2" ]']
VALUE_TOKENS = ["1", "-1.5e3", '"x"', "[]", "{}", '[1,{"a":[true,false,null]}]', '"a\\"b"', '"\\u00e9"',
                "01", "1.", ".5", "NaN", "tru", "nul", "[1,]", '{"a":1,}', '{"a"}', '"a\x00"', '"\\x"',
                '"\\u12"', "-", "+1", "1e", "[", '{"a":1', "'a'", "1E+2", "-0.0", '{"a":[]}', "[[[[]]]]",
                '{"a" : 1 , "b" : [ 2 ] }', '"\x7f"', "1 2", "[1 2]", '{"a":1 "b":2}', "falsey"]
CONTROL_BYTES = ["\x00", "\x01", "\x08", "\x0b", "\x0c", "\x1f", " ", "\t", "\r", "\x7f"]
BOUNDARY = re.compile(r'[{\[,:]|(?=[}\]])')


def _symbol_spans(line: str) -> list[range]:
    # the symbol and the quotes around it: another symbol is the engine's own error (the file's
    # symbol), which the reference does not know
    return [range(m.start() - 1, m.end() + 1) for m in re.finditer("BTCUSDT", line)]


def _replace_one(line: str, pattern: str, tokens: Sequence[str], rng: random.Random) -> str:
    """One match of `pattern`, chosen at random, replaced by one of `tokens` (the line as it is
    when nothing matches)."""
    matches = list(re.finditer(pattern, line))
    if not matches:
        return line
    m = rng.choice(matches)
    return line[: m.start()] + rng.choice(tokens) + line[m.end():]


def mutate(line: str, rng: random.Random) -> str:
    kind = rng.randrange(10)
    if kind == 0:
        return re.sub(r'"ts":-?\d+', lambda _: '"ts":' + rng.choice(TS_TOKENS), line, count=1)
    if kind == 1:
        return re.sub(r'"u":-?\d+', lambda _: '"u":' + rng.choice(TS_TOKENS), line, count=1)
    if kind == 2:  # a byte between tokens
        spots = [m.end() for m in BOUNDARY.finditer(line)]
        at = rng.choice(spots)
        return line[:at] + rng.choice(CONTROL_BYTES) + line[at:]
    if kind in (3, 4):  # any printable or control byte (no LF) anywhere but in the symbol
        spans = _symbol_spans(line)
        at = rng.choice([i for i in range(len(line)) if not any(i in s for s in spans)])
        new = chr(rng.choice([*range(1, 10), *range(11, 128)])) if kind == 3 else ""
        return line[:at] + new + line[at + 1:]
    if kind == 5:  # one number of a level
        return _replace_one(line, r'"-?[0-9.]+"(?=[,\]])', NUMBER_TOKENS, rng)
    if kind == 6:  # one level's shape
        return _replace_one(line, r'\["[^"]*","[^"]*"\]', LEVEL_TOKENS, rng)
    if kind == 7:  # a side's list
        side = rng.choice(("b", "a"))
        return re.sub(rf'"{side}":\[[^\]]*(\][^\]]*)?\]', lambda _: f'"{side}":' + rng.choice(
            ["null", "{}", '"x"', "[ ]", "1"]), line, count=1)
    if kind == 8:  # a key dropped
        key = rng.choice(("ts", "u", "type", "data", "b", "topic", "cts", "seq", "s"))
        return re.sub(rf'"{key}":(\d+|"[^"]*"|\[[^\]]*\]),?', "", line, count=1)
    # an unread key with a valid or invalid value, at the top or in data
    where = rng.choice(('{"topic"', '"data":{'))
    token = rng.choice(VALUE_TOKENS)
    return line.replace(where, where[:-len('"topic"')] + f'"zz":{token},"topic"' if where == '{"topic"'
                        else where + f'"zz":{token},', 1)


def _base_line(rng: random.Random, ts: int, u: int) -> str:
    def side(n: int, base: int, step: int) -> list[tuple[str, str]]:
        return [(f"{base + step * i}.{rng.randint(0, 9)}", str(rng.randint(0, 5))) for i in range(n)]

    kind = rng.choice(("snapshot", "delta"))
    return msg(kind, ts, bids=side(rng.randint(0, 3), 100, -1), asks=side(rng.randint(0, 3), 110, 1), u=u,
               key_order=rng.choice((("topic", "ts", "type", "data", "cts"), ("data", "cts", "ts", "type", "topic"))))


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**64 - 1), n_lines=st.integers(1, 30), rounds=st.integers(1, 3))
def test_engine_and_reference_decide_the_same_on_mutated_lines(seed, n_lines, rounds):
    rng = random.Random(seed)
    lines = [msg("snapshot", T0 + 50, bids=[("100.0", "1")], asks=[("110.0", "1")], u=1)]
    for i in range(n_lines):
        line = _base_line(rng, T0 + 100 + 150 * i, i + 2)
        for _ in range(rng.randint(1, rounds)):
            line = mutate(line, rng)
        ref, eng = reference_accepts(line), engine_accepts(line)
        assert ref == eng, f"reference accepts: {ref}, engine accepts: {eng}: {line!r}"
        lines.append(line)
    # and the whole stream, skipping the bad lines, replays the same
    ref_result = reference.reference_replay(lines, DAY, out_levels=5, capture_seconds=3)
    data = "".join(line + "\r\n" for line in lines).encode()
    cuts = sorted({0, len(data), *rng.sample(range(len(data)), 4)})  # chunks cut anywhere
    eng_result = replay_stream([data[a:b] for a, b in itertools.pairwise(cuts)], DAY,
                               ReplayConfig(out_levels=5, capture_seconds=3, skip_bad_lines=True))
    assert_engine_matches(ref_result, eng_result, 5, "(mutated lines, skipped)")


# --- the symbol and the day the name gives ----------------------------------------------------------

FILE_DAY = dt.date(2025, 3, 14)
FILE_T0 = int(dt.datetime(2025, 3, 14, tzinfo=dt.UTC).timestamp()) * 1000


def day_lines(t0: int, symbol: str = "BTCUSDT", n: int = 300) -> list[str]:
    lines = [msg("snapshot", t0 + 500, bids=[("100.0", "1")], asks=[("100.1", "3")], u=1)]
    lines += [msg("delta", t0 + 1000 * s, bids=[("100.0", str(1 + s % 5))], u=s + 1) for s in range(1, n)]
    lines.append(msg("snapshot", t0 + 86_400_000 + 20, bids=[("100.0", "1")], asks=[("100.1", "3")], u=n))
    return [line.replace("BTCUSDT", symbol) for line in lines]


def write_zip(folder: Path, name: str, lines: list[str]) -> Path:
    path = folder / f"{name}.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, ("\r\n".join(lines) + "\r\n").encode())
    return path


def test_another_symbol_than_the_name_says_fails_naming_both_and_the_file(tmp_path):
    source = write_zip(tmp_path, "2025-03-14_BTCUSDT_ob200.data", day_lines(FILE_T0, "XRPUSDT"))
    with pytest.raises(OrderBookInputError, match=rf"{re.escape(str(source))}: line 1: .*XRPUSDT.*BTCUSDT"):
        convert_day(source, tmp_path / "out.parquet")
    assert not (tmp_path / "out.parquet").exists()
    # the symbol given by the caller is the one checked
    summary = convert_day(source, tmp_path / "out.parquet", day=FILE_DAY, symbol="XRPUSDT")
    assert summary.symbol == "XRPUSDT"


def test_a_message_of_another_symbol_mid_file_fails_even_when_skipping_bad_lines():
    lines = day_lines(FILE_T0, n=20)
    lines[7] = lines[7].replace('"s":"BTCUSDT"', '"s":"ETHUSDT"')
    for skip in (False, True):
        with pytest.raises(OrderBookInputError, match=r"line 8: a message of ETHUSDT, but the file holds BTCUSDT"):
            replay_stream([("\r\n".join(lines)).encode()], FILE_DAY, ReplayConfig(skip_bad_lines=skip))
    lines = day_lines(FILE_T0, n=20)
    lines[3] = lines[3].replace("orderbook.200.BTCUSDT", "orderbook.200.BTCUSD")
    with pytest.raises(OrderBookInputError, match=r"line 4: a message of BTCUSD, but"):
        replay_stream([("\r\n".join(lines)).encode()], FILE_DAY, symbol="BTCUSDT")


@pytest.mark.parametrize(("named", "shift_days"), [("2025-03-15", 0), ("2025-03-13", 0), ("2025-03-14", 2)])
def test_a_file_of_another_day_fails_naming_the_day_of_its_messages(tmp_path, named, shift_days):
    t0 = FILE_T0 + shift_days * 86_400_000
    source = write_zip(tmp_path, f"{named}_BTCUSDT_ob200.data", day_lines(t0))
    actual = (FILE_DAY + dt.timedelta(days=shift_days)).isoformat()
    with pytest.raises(OrderBookInputError, match=rf"{re.escape(str(source))}: named {named} but its messages "
                                                  rf"are from {actual}"):
        convert_day(source, tmp_path / "out.parquet")


def test_a_day_with_a_minute_of_the_day_before_and_the_next_snapshot_passes(tmp_path):
    lines = [msg("snapshot", FILE_T0 - 60_000, bids=[("100.0", "1")], asks=[("100.1", "3")], u=1)]
    lines += day_lines(FILE_T0)[1:]
    source = write_zip(tmp_path, "2025-03-14_BTCUSDT_ob200.data", lines)
    summary = convert_day(source, tmp_path / "out.parquet")
    assert summary.counts["messages_before_day"] == 1 and summary.counts["messages_after_day"] == 1


# --- bounded lines -------------------------------------------------------------------------------------

CAP = 100 << 10  # 100 KB


def long_line(n_bytes: int) -> str:
    line = msg("delta", T0 + 300, bids=[("99", "1")], u=2)
    return line[:-1] + ',"pad":"' + "x" * n_bytes + '"}'


@pytest.mark.parametrize("chunk", [1 << 12, 1 << 16, 1 << 20, 8 << 20])
@pytest.mark.parametrize("where", ["middle", "last"])
def test_a_line_longer_than_the_cap_is_a_bad_line_wherever_chunks_end(chunk, where):
    lines = [SNAP, long_line(3 << 20), msg("delta", T0 + 1300, bids=[("100.0", "4")], u=3)]
    if where == "last":
        lines = [SNAP, msg("delta", T0 + 1300, bids=[("100.0", "4")], u=3), long_line(3 << 20)]
    data = ("\r\n".join(lines)).encode()
    chunks = [data[a:a + chunk] for a in range(0, len(data), chunk)]
    line_no = 2 if where == "middle" else 3
    with pytest.raises(OrderBookInputError, match=rf"<stream>: line {line_no}: longer than 100 KB"):
        replay_stream(chunks, DAY, ReplayConfig(max_line_bytes=CAP))
    config = ReplayConfig(max_line_bytes=CAP, skip_bad_lines=True, capture_seconds=3, out_levels=5)
    r = replay_stream(chunks, DAY, config)
    assert r.counts["bad_lines"] == 1 and r.counts["n_lines"] == 3 and r.counts["n_messages"] == 2
    ref = reference.reference_replay(lines, DAY, out_levels=5, capture_seconds=3, max_line_bytes=CAP)
    assert_engine_matches(ref, r, 5, "(over-long line skipped)")
    # under a cap above it, the same line is just a line
    assert replay_stream(chunks, DAY, ReplayConfig()).counts["bad_lines"] == 0


def test_the_cap_is_exact():
    line = long_line(1000)
    exact = len(line)
    for cap, bad in ((exact, 0), (exact - 1, 1)):
        data = f"{SNAP}\n{line}\n".encode()
        r = replay_stream([data[:7], data[7:exact // 2], data[exact // 2:]], DAY,
                          ReplayConfig(max_line_bytes=cap, skip_bad_lines=True))
        assert r.counts["bad_lines"] == bad


def _peak_bytes(line_mb: int) -> int:
    piece = b"x" * (1 << 20)  # the same bytes again and again: the input itself costs nothing

    def chunks():
        yield (SNAP + "\n" + long_line(10)[:-2]).encode()
        for _ in range(line_mb):
            yield piece
        yield ('"}\n' + msg("delta", T0 + 1300, bids=[("100.0", "4")], u=3) + "\n").encode()

    tracemalloc.start()
    try:
        r = replay_stream(chunks(), DAY, ReplayConfig(max_line_bytes=2 << 20, skip_bad_lines=True))
        assert r.counts["bad_lines"] == 1 and r.counts["n_messages"] == 2
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_an_over_long_line_takes_memory_bounded_by_the_cap():
    small, large = _peak_bytes(4), _peak_bytes(48)
    assert large - small < (4 << 20), (small, large)  # 44 MB more line, not 44 MB more memory


def test_max_line_bytes_must_be_positive():
    with pytest.raises(ValueError, match="max_line_bytes"):
        ReplayConfig(max_line_bytes=0)
