"""The synthetic market generator: file shape, exchange window, faults, continuity, dynamics, signal."""

from __future__ import annotations

import datetime as dt
import heapq
import json
import re
import zipfile
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from quantgod_assets.orderbook.synthetic import (
    FAULTS,
    REGIME_DRIFT,
    fault_times,
    generate_day,
    generate_days,
    price_path,
)

from ..builders import DictBook, day_start_ms

DAY = dt.date(2025, 3, 10)
SHORT_S = 240
PRICE_RE = re.compile(r"^\d+\.\d{2}$")
SIZE_RE = re.compile(r"^(0|\d+\.\d{3})$")


def read_lines(path: Path) -> list[bytes]:
    with zipfile.ZipFile(path) as zf:
        (member,) = zf.namelist()
        data = zf.read(member)
    assert data.endswith(b"\r\n")
    return data.split(b"\r\n")[:-1]


@pytest.fixture(scope="module")
def short_day(tmp_path_factory) -> tuple[Path, list[bytes]]:
    out = tmp_path_factory.mktemp("short")
    (path,) = generate_days(DAY, 1, out, seed=3, duration_s=SHORT_S)
    return path, read_lines(path)


# --- the file ---------------------------------------------------------------------------------


def test_path_and_member(short_day, tmp_path):
    path, _ = short_day
    assert path.parent.name == "2025"
    assert path.name == "2025-03-10_BTCUSDT_ob200.data.zip"
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
    assert [i.filename for i in infos] == ["2025-03-10_BTCUSDT_ob200.data"]
    assert infos[0].compress_type == zipfile.ZIP_DEFLATED
    other = generate_day(dt.date(2024, 12, 31), tmp_path, symbol="ETHUSDT", depth=50, duration_s=5,
                         start_price=3500.0)
    assert other == tmp_path / "2024" / "2024-12-31_ETHUSDT_ob50.data.zip"


def test_crlf_and_keys_and_numbers(short_day):
    path, lines = short_day
    with zipfile.ZipFile(path) as zf:
        raw = zf.read(zf.namelist()[0])
    assert raw.count(b"\n") == raw.count(b"\r\n") == len(lines)
    for line in lines:
        msg = json.loads(line)
        assert set(msg) == {"topic", "ts", "type", "data", "cts"}
        assert msg["topic"] == "orderbook.200.BTCUSDT"
        assert msg["type"] in ("snapshot", "delta")
        data = msg["data"]
        assert set(data) == {"s", "b", "a", "u", "seq"}
        assert data["s"] == "BTCUSDT"
        assert isinstance(msg["ts"], int) and isinstance(msg["cts"], int)
        assert isinstance(data["u"], int) and isinstance(data["seq"], int)
        assert msg["ts"] - 20 < msg["cts"] < msg["ts"]
        for side in ("b", "a"):
            for px, sz in data[side]:
                assert isinstance(px, str) and PRICE_RE.match(px), px
                assert isinstance(sz, str) and SIZE_RE.match(sz), sz
                assert round(Decimal(px) * 10) == Decimal(px) * 10  # tick 0.10
    # a real BTC book: sizes like "0.125", lines near a kilobyte
    assert 600 < np.mean([len(line) for line in lines[1:]]) < 1400


def test_timing_u_seq(short_day):
    _, lines = short_day
    msgs = [json.loads(line) for line in lines]
    start = day_start_ms(DAY)
    assert msgs[0]["type"] == "snapshot"
    assert start < msgs[0]["ts"] < start + 1000
    assert all(m["type"] == "delta" for m in msgs[1:])  # a short day: no next-day snapshot
    ts = np.array([m["ts"] for m in msgs])
    assert np.all(np.diff(ts) >= 0)
    assert ts[-1] < start + SHORT_S * 1000
    assert abs(np.median(np.diff(ts)) - 100) <= 10
    assert len(msgs) == pytest.approx(SHORT_S * 10, abs=5)
    u = np.array([m["data"]["u"] for m in msgs])
    assert np.all(np.diff(u) == 1)
    seq = np.array([m["data"]["seq"] for m in msgs])
    assert np.all(np.diff(seq) > 0) and np.any(np.diff(seq) > 1)


def test_window_is_exactly_depth_after_every_message(short_day):
    _, lines = short_day
    book = DictBook()
    spreads, n_levels = [], []
    for line in lines:
        msg = json.loads(line)
        for side in ("b", "a"):  # one entry per price and side in a message
            prices = [Decimal(px) for px, _ in msg["data"][side]]
            assert len(prices) == len(set(prices))
        book.apply(msg)
        assert len(book.bids) == 200 and len(book.asks) == 200
        bid, ask = book.best()
        assert bid < ask
        spreads.append(ask - bid)
        if msg["type"] == "delta":
            n_levels.append(len(msg["data"]["b"]) + len(msg["data"]["a"]))
    assert np.mean([s == Decimal("0.10") for s in spreads]) > 0.85
    assert 20 < np.mean(n_levels) < 70


def test_depth_500_window(tmp_path):
    path = generate_day(DAY, tmp_path, depth=500, duration_s=20, seed=1)
    assert path.name == "2025-03-10_BTCUSDT_ob500.data.zip"
    book = DictBook()
    for line in read_lines(path):
        msg = json.loads(line)
        assert msg["topic"] == "orderbook.500.BTCUSDT"
        book.apply(msg)
        assert len(book.bids) == 500 and len(book.asks) == 500


# --- determinism and continuity ---------------------------------------------------------------


def test_deterministic_for_a_seed(tmp_path, short_day):
    _, lines = short_day
    (again,) = generate_days(DAY, 1, tmp_path / "a", seed=3, duration_s=SHORT_S)
    assert read_lines(again) == lines
    single = generate_day(DAY, tmp_path / "b", seed=3, duration_s=SHORT_S)
    assert read_lines(single) == lines
    (other,) = generate_days(DAY, 1, tmp_path / "c", seed=4, duration_s=SHORT_S)
    assert read_lines(other) != lines


def test_consecutive_short_days_are_continuous(tmp_path):
    paths = generate_days(DAY, 2, tmp_path, seed=5, duration_s=60)
    assert [p.name[:10] for p in paths] == ["2025-03-10", "2025-03-11"]
    book = DictBook()
    for line in read_lines(paths[0]):
        book.apply(json.loads(line))
    end_bids, end_asks = dict(book.bids), dict(book.asks)
    last_u = json.loads(read_lines(paths[0])[-1])["data"]["u"]
    second = [json.loads(line) for line in read_lines(paths[1])]
    opening = second[0]
    assert opening["type"] == "snapshot"
    assert day_start_ms(DAY + dt.timedelta(days=1)) < opening["ts"] < day_start_ms(DAY + dt.timedelta(days=1)) + 1000
    assert opening["data"]["u"] == last_u
    assert second[1]["data"]["u"] == last_u + 1
    book.apply(opening)
    assert book.bids == end_bids and book.asks == end_asks  # the same book: the price goes on


def test_full_days_end_with_the_next_days_snapshot(tmp_path):
    """Full-length days (1 s messages keep it quick): the next day's opening snapshot closes each."""
    paths = generate_days(DAY, 2, tmp_path, seed=2, rate_ms=1000, depth=50)
    first, second = read_lines(paths[0]), read_lines(paths[1])
    assert len(first) == pytest.approx(86_400 + 1, abs=3)
    assert sum(b'"type":"snapshot"' in line for line in first) == 2
    assert json.loads(first[0])["type"] == "snapshot"
    last, before = json.loads(first[-1]), json.loads(first[-2])
    next_start = day_start_ms(DAY + dt.timedelta(days=1))
    assert last["type"] == "snapshot" and before["type"] == "delta"
    assert next_start < last["ts"] < next_start + 1000
    assert before["ts"] < next_start
    assert last["data"]["u"] == before["data"]["u"]
    assert second[0] == first[-1]  # the next file opens with the very same snapshot
    assert json.loads(second[1])["data"]["u"] == last["data"]["u"] + 1
    assert len(last["data"]["b"]) == 50 and len(last["data"]["a"]) == 50


@pytest.mark.slow
def test_full_day_at_100ms_ends_with_next_day_snapshot(tmp_path):
    path = generate_day(DAY, tmp_path, seed=1)
    with zipfile.ZipFile(path) as zf, zf.open(zf.namelist()[0]) as f:
        n, tail = 0, []
        for line in f:
            n += 1
            tail = [*tail[-1:], line]
    assert 860_000 < n < 866_000
    before, last = (json.loads(x) for x in tail)
    assert last["type"] == "snapshot" and before["type"] == "delta"
    assert last["data"]["u"] == before["data"]["u"]
    assert last["ts"] > day_start_ms(DAY + dt.timedelta(days=1)) > before["ts"]


# --- faults -----------------------------------------------------------------------------------


def fault_day(tmp_path: Path, *faults: str, duration_s: int = 600) -> list[bytes]:
    path = generate_day(DAY, tmp_path, seed=7, faults=faults, duration_s=duration_s)
    return read_lines(path)


def test_restart(tmp_path):
    msgs = [json.loads(line) for line in fault_day(tmp_path, "restart")]
    snaps = [i for i, m in enumerate(msgs) if m["type"] == "snapshot"]
    assert len(snaps) == 2 and snaps[0] == 0
    i = snaps[1]
    assert msgs[i]["data"]["u"] == 1
    assert msgs[i + 1]["data"]["u"] == 2 and msgs[i + 2]["data"]["u"] == 3
    at = fault_times(600)["restart"][0]
    assert abs(msgs[i]["ts"] - day_start_ms(DAY) - at) < 1000
    assert len(msgs[i]["data"]["b"]) == 200 and len(msgs[i]["data"]["a"]) == 200


def test_gap(tmp_path):
    msgs = [json.loads(line) for line in fault_day(tmp_path, "gap")]
    steps = np.diff([m["data"]["u"] for m in msgs])
    assert sorted(set(steps.tolist())) == [1, 6]
    assert int(np.sum(steps == 6)) == 1


def test_silence(tmp_path):
    msgs = [json.loads(line) for line in fault_day(tmp_path, "silence", duration_s=1200)]
    gaps = np.diff([m["ts"] for m in msgs])
    _start, length = fault_times(1200)["silence"]
    assert length == 120_000
    assert int(np.sum(gaps >= length)) == 1 and gaps.max() < length + 1000
    assert np.all(np.diff([m["data"]["u"] for m in msgs]) == 1)
    full = fault_times(None)["silence"]
    assert full[1] == 300_000 and 6 * 3_600_000 < full[0] < 18 * 3_600_000


def test_crossed(tmp_path):
    book = DictBook()
    crossed = []
    for i, line in enumerate(fault_day(tmp_path, "crossed")):
        msg = json.loads(line)
        book.apply(msg)
        bid, ask = book.best()
        if bid >= ask:
            crossed.append(i)
            assert msg["data"]["b"] and msg["data"]["a"]  # both sides touched
        assert len(book.bids) == 200 and len(book.asks) == 200
    assert len(crossed) == 1


def test_malformed(tmp_path):
    lines = fault_day(tmp_path, "malformed")
    bad = []
    for i, line in enumerate(lines):
        try:
            json.loads(line)
        except ValueError:
            bad.append(i)
    assert len(bad) == 1
    i = bad[0]
    assert lines[i - 1].startswith(lines[i]) and len(lines[i]) < len(lines[i - 1])
    good = [json.loads(x) for j, x in enumerate(lines) if j != i]
    assert np.all(np.diff([m["data"]["u"] for m in good]) == 1)


def test_truncated(tmp_path):
    path = generate_day(DAY, tmp_path, seed=7, faults=("truncated",), duration_s=60)
    whole = generate_day(DAY, tmp_path / "whole", seed=7, duration_s=60)
    assert path.stat().st_size == int(whole.stat().st_size * 0.7)
    with pytest.raises((zipfile.BadZipFile, EOFError, OSError)), zipfile.ZipFile(path) as zf:
        zf.read(zf.namelist()[0])


def test_all_faults_together_and_unknown(tmp_path):
    # the faults that keep the window whole after every message (early_deltas, narrow_restart and
    # one_sided_cross do not, on purpose: test_synthetic_faults.py replays them all with the reference)
    lines = fault_day(tmp_path, "restart", "gap", "silence", "crossed", "malformed", "boundary", duration_s=3000)
    assert {"restart", "gap", "silence", "crossed", "malformed", "truncated"} < set(FAULTS)
    book = DictBook()
    bad = 0
    for line in lines:
        try:
            msg = json.loads(line)
        except ValueError:
            bad += 1
            continue
        book.apply(msg)
        assert len(book.bids) == 200 and len(book.asks) == 200
    assert bad == 1
    with pytest.raises(ValueError, match="unknown fault"):
        generate_day(DAY, tmp_path, faults=("nope",), duration_s=5)


# --- dynamics and signal ----------------------------------------------------------------------


def test_hourly_moves_like_btc():
    days = 8
    minute = price_path(days, rate_ms=1000, seed=11)[59::60]
    assert len(minute) == days * 1440
    log_ret = np.diff(np.log(minute))
    assert 0.0005 < log_ret.std() < 0.0012  # per-minute volatility about 0.07-0.1 %
    r60 = minute[60:] / minute[:-60] - 1
    per_day = [np.abs(r60[d * 1440:(d + 1) * 1440 - 60]).max() for d in range(days)]
    assert sum(m >= 0.004 for m in per_day) >= days - 1
    daily = [minute[(d + 1) * 1440 - 1] / minute[d * 1440] - 1 for d in range(days)]
    assert max(abs(x) for x in daily) < 0.2
    # continuous across days, and the first day matches a one-day path
    assert np.allclose(price_path(1, rate_ms=1000, seed=11)[59::60], minute[:1440])


def minute_imbalance_and_mid(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Replays consecutive days' lines; at each minute boundary, the top-20 size imbalance
    (bids - asks) / (bids + asks) and the mid price of the book held then."""
    bids: dict[float, float] = {}
    asks: dict[float, float] = {}
    imbalance, mid = [], []
    next_minute = None
    for k, path in enumerate(paths):
        with zipfile.ZipFile(path) as zf, zf.open(zf.namelist()[0]) as f:
            for j, line in enumerate(f):
                if k > 0 and j == 0:
                    continue  # the previous file's last line
                msg = json.loads(line)
                if next_minute is None:
                    next_minute = (msg["ts"] // 60_000 + 1) * 60_000
                while msg["ts"] >= next_minute:
                    top_b, top_a = heapq.nlargest(20, bids), heapq.nsmallest(20, asks)
                    sb, sa = sum(bids[p] for p in top_b), sum(asks[p] for p in top_a)
                    imbalance.append((sb - sa) / (sb + sa))
                    mid.append((top_b[0] + top_a[0]) / 2)
                    next_minute += 60_000
                data = msg["data"]
                if msg["type"] == "snapshot":
                    bids.clear()
                    asks.clear()
                for side, book in ((data["b"], bids), (data["a"], asks)):
                    for px, sz in side:
                        if sz == "0":
                            book.pop(float(px), None)
                        else:
                            book[float(px)] = float(sz)
    return np.array(imbalance), np.array(mid)


def imbalance_lead(imbalance: np.ndarray, mid: np.ndarray) -> tuple[float, np.ndarray]:
    """corr(imbalance at minute t, return t -> t+60), and those forward returns."""
    forward = mid[60:] / mid[:-60] - 1
    return float(np.corrcoef(imbalance[:-60], forward)[0, 1]), forward


def hourly_autocorrelation(prices: np.ndarray, lags: tuple[int, ...] = (1, 2, 3)) -> np.ndarray:
    """The autocorrelation of hourly log returns at `lags` hours; `prices` one a minute."""
    hourly = np.diff(np.log(prices[59::60]))
    return np.array([np.corrcoef(hourly[:-k], hourly[k:])[0, 1] for k in lags])


def test_imbalance_leads_the_next_hour(tmp_path):
    """corr(top-20 imbalance at minute t, return t -> t+60) is clearly positive."""
    paths = generate_days(DAY, 2, tmp_path, seed=0, rate_ms=2000, depth=30)
    imbalance, mid = minute_imbalance_and_mid(paths)
    assert len(mid) >= 2 * 1440 - 2
    corr, forward = imbalance_lead(imbalance, mid)
    assert corr > 0.15, corr
    # and the labels are not degenerate: SELL (<= -0.4 %) and BUY (>= +0.8 %) both happen
    assert np.mean(forward <= -0.004) > 0.05 and np.mean(forward >= 0.008) > 0.02


@pytest.mark.slow  # ~4.5 s a seed (four generated days replayed in Python)
@pytest.mark.parametrize("seed", [1, 2])
def test_null_signal_imbalance_does_not_lead(tmp_path, seed):
    """At signal 0 the imbalance says nothing of the next hour, while the same seed at signal 1
    (the same noise: shown by the minute returns) has the lead, so the measurement can see one.
    10 s messages keep it quick; 2 days give 2,820 (imbalance, next hour) pairs."""
    measured = {}
    for signal in (0.0, 1.0):
        paths = generate_days(DAY, 2, tmp_path / str(signal), seed=seed, rate_ms=10_000, depth=30, signal=signal)
        measured[signal] = minute_imbalance_and_mid(paths)
    null_corr, _ = imbalance_lead(*measured[0.0])
    lead_corr, _ = imbalance_lead(*measured[1.0])
    # The imbalance forgets in minutes, but the 60-minute forward returns overlap: about 600
    # independent pairs, a null standard error near 1/sqrt(600) = 0.04 (Bartlett's formula on
    # these days: 0.03-0.05). 0.15 is ~4 of them; signal 1 measures 0.35-0.6 here.
    assert abs(null_corr) < 0.15, null_corr
    assert lead_corr > 0.25, lead_corr
    # same noise and volatility: the drift is the only difference in the price
    null_ret, lead_ret = (np.diff(np.log(mid)) for _, mid in measured.values())
    assert abs(null_ret.std() / lead_ret.std() - 1) < 0.1
    assert np.corrcoef(null_ret, lead_ret)[0, 1] > 0.9


def test_null_signal_hourly_returns_have_no_momentum():
    """Drift regimes lasting 1-3 h make the last hour predict the next at signal 1; at signal 0
    (regimes off) the hourly returns are uncorrelated. The path alone (no book) is cheap, so 100
    days at one price a minute."""
    for seed in (1, 2):
        null = hourly_autocorrelation(price_path(100, rate_ms=60_000, seed=seed, signal=0.0))
        regimes = hourly_autocorrelation(price_path(100, rate_ms=60_000, seed=seed))
        # 2,399 hourly returns: a null standard error of 1/sqrt(2399) = 0.02; 0.08 is 4 of them
        assert np.abs(null).max() < 0.08, null
        assert regimes[0] > 0.12, regimes  # ~0.2 measured: the momentum the null must not have


@pytest.mark.parametrize("signal", [0.5, 1.0])
def test_signal_scales_only_the_drift(signal):
    """The same random numbers at every strength: a minute's log return at `signal` differs from
    the null's by exactly `signal` times one of the regime drifts (per hour, over 1/60 h)."""
    null = np.diff(np.log(price_path(3, rate_ms=60_000, seed=4, signal=0.0)))
    scaled = np.diff(np.log(price_path(3, rate_ms=60_000, seed=4, signal=signal)))
    drift_per_hour = (scaled - null) * 60
    nearest = np.abs(drift_per_hour[:, None] - signal * REGIME_DRIFT[None, :]).min(axis=1)
    assert nearest.max() < 1e-9
    assert len(np.unique(np.round(drift_per_hour, 6))) >= 3  # several regimes were met


@pytest.mark.parametrize("signal", [-0.1, float("nan"), float("inf")])
def test_bad_signal_is_refused_before_writing(tmp_path, signal):
    with pytest.raises(ValueError, match="signal must be"):
        generate_day(DAY, tmp_path, duration_s=5, signal=signal)
    with pytest.raises(ValueError, match="signal must be"):
        generate_days(DAY, 1, tmp_path, duration_s=5, signal=signal)
    with pytest.raises(ValueError, match="signal must be"):
        price_path(1, signal=signal)
    assert not list(tmp_path.rglob("*"))
