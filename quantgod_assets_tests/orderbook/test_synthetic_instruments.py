"""The generator's instruments: each symbol's price scale and tick, each category's number format
and folder, replayed by the engine and the reference (the Decimal oracle), which must agree."""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from decimal import Decimal
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from quantgod_assets.archive import InvalidSymbolError, download_folder
from quantgod_assets.cli import main as cli_main
from quantgod_assets.orderbook.etl import convert_day
from quantgod_assets.orderbook.reference import read_lines, reference_replay
from quantgod_assets.orderbook.replay import DayReplay, ReplayConfig, replay_file
from quantgod_assets.orderbook.synthetic import (
    PROFILES,
    archive_path,
    generate_day,
    generate_days,
    instrument,
    price_path,
)

from ..builders import DictBook, assert_engine_matches

DAY = dt.date(2025, 3, 10)
SECONDS = 20
LEVELS = 50
FIXED_2 = re.compile(r"^\d+\.\d{2}$")
TRIMMED = re.compile(r"^(0|[1-9]\d*|\d+\.\d*[1-9])$")  # no trailing zero after a point, no bare point


def messages(path: Path) -> list[dict]:
    return [json.loads(line) for line in read_lines(path)]


def numbers(msgs: list[dict]) -> tuple[list[str], list[str]]:
    """Every price string and every non-delete size string of the file."""
    prices, sizes = [], []
    for msg in msgs:
        for side in ("b", "a"):
            for px, sz in msg["data"][side]:
                prices.append(px)
                if sz != "0":
                    sizes.append(sz)
    return prices, sizes


def on_grid(text: str, tick: Decimal) -> bool:
    return (Decimal(text) / tick) % 1 == 0


def engine_and_reference(path: Path) -> DayReplay:
    """The engine's replay of `path`, after checking it equals the reference's, sample by sample."""
    capture = SECONDS + 2
    ref = reference_replay(read_lines(path), DAY, out_levels=LEVELS, capture_seconds=capture)
    eng = replay_file(path, DAY, ReplayConfig(out_levels=LEVELS, capture_seconds=capture))
    assert_engine_matches(ref, eng, LEVELS, f"({path.name})")
    return eng


def mids(eng: DayReplay) -> np.ndarray:
    mid = eng.second_mid[:SECONDS - 1]
    assert eng.second_valid[:SECONDS - 1].all()
    return mid


# --- profiles ---------------------------------------------------------------------------------


def test_profiles_and_the_rule_for_other_symbols():
    btc, eth, sol = instrument("BTCUSDT"), instrument("ETHUSDT"), instrument("SOLUSDT")
    assert (btc.tick, btc.price_decimals, btc.lots) == (0.1, 2, 1000)  # as before: sizes in thousandths
    assert (eth.tick, eth.price_decimals) == (0.01, 2) and eth.start_range[0] < 2000 < eth.start_range[1]
    assert (sol.tick, sol.price_decimals) == (0.01, 3) and sol.start_range[0] < 150 < sol.start_range[1]
    assert instrument("BTCUSD", "inverse").base == instrument("BTCUSDT", "spot").base == "BTC"
    assert instrument("ETHUSDT", "spot").trim and not instrument("ETHUSDT").trim
    scales = set()
    for symbol in ("XRPUSDT", "ADAUSDT", "1000PEPEUSDT", "DOGEUSDT", "LINKUSDT", "AVAXUSDT", "TONUSDT"):
        inst = instrument(symbol)
        assert inst.base not in PROFILES
        assert inst == instrument(symbol)  # from the name alone
        scale = math.sqrt(inst.start_range[0] * inst.start_range[1])
        assert 0.005 < scale < 20_000
        assert 0.9e-5 <= inst.tick / scale <= 1.1e-4, (symbol, inst.tick, scale)
        assert inst.tick == 10.0**-inst.tick_decimals
        # sizes grow as the price falls: a top level is worth about as much as BTC's
        assert 0.1 < inst.lots / 10**inst.size_decimals * scale / 84_000 < 10
        scales.add(round(scale, 6))
    assert len(scales) >= 5  # the names spread the scales
    # an explicit start price sets an unlisted symbol's scale and tick
    assert instrument("XYZUSDT", start_price=0.5).tick == 1e-5
    with pytest.raises(ValueError, match="category"):
        instrument("BTCUSDT", "futures")
    with pytest.raises(InvalidSymbolError):
        instrument("btcusdt", "spot")  # a folder name: Bybit's upper-case symbols only


def test_price_paths_in_scale_and_not_in_lockstep():
    btc = price_path(1, rate_ms=60_000, seed=3)
    eth = price_path(1, rate_ms=60_000, seed=3, symbol="ETHUSDT")
    sol = price_path(1, rate_ms=60_000, seed=3, symbol="SOLUSDT")
    assert btc.min() > 50_000 and btc.max() < 130_000
    assert eth.min() > 1_200 and eth.max() < 3_000
    assert sol.min() > 80 and sol.max() < 240
    r_btc, r_eth = np.diff(np.log(btc)), np.diff(np.log(eth))
    assert abs(np.corrcoef(r_btc, r_eth)[0, 1]) < 0.3  # their own random streams
    assert 0.5 < r_eth.std() / r_btc.std() < 2  # the same dynamics
    with pytest.raises(ValueError, match="start_price must be at least 50"):
        price_path(1, symbol="ETHUSDT", start_price=20.0)  # 2,000 ticks: too few for a book


# --- ETHUSDT linear ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eth_day(tmp_path_factory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("eth")
    (path,) = generate_days(DAY, 1, out, symbol="ETHUSDT", seed=3, duration_s=SECONDS)
    return out, path


def test_ethusdt_linear_day(eth_day):
    out, path = eth_day
    assert path == out / "2025" / "2025-03-10_ETHUSDT_ob200.data.zip"
    assert path == archive_path(out, DAY, "ETHUSDT", 200, "linear")
    msgs = messages(path)
    assert {m["topic"] for m in msgs} == {"orderbook.200.ETHUSDT"} and {m["data"]["s"] for m in msgs} == {"ETHUSDT"}
    prices, sizes = numbers(msgs)
    assert all(FIXED_2.match(px) for px in prices)  # linear: fixed two decimals
    assert all(on_grid(px, Decimal("0.01")) for px in prices)
    # the cent is used: a 0.10 tick would leave it 0
    assert np.mean([px[-1] != "0" for px in prices]) > 0.8
    assert all(re.fullmatch(r"\d+\.\d{2}", sz) for sz in sizes)  # sizes in hundredths of an ETH
    book = DictBook()
    spreads = []
    for msg in msgs:
        book.apply(msg)
        assert len(book.bids) == 200 and len(book.asks) == 200
        bid, ask = book.best()
        spreads.append(ask - bid)
    assert np.mean([s == Decimal("0.01") for s in spreads]) > 0.85  # one tick
    top_sizes = [float(sz) for m in msgs[:1] for sz in (m["data"]["b"][0][1], m["data"]["a"][0][1])]
    assert 1 < np.mean(top_sizes) < 1_000  # ETH-sized levels, not BTC's 0.35


def test_ethusdt_engine_and_reference_agree(eth_day, tmp_path):
    _, path = eth_day
    eng = engine_and_reference(path)
    mid = mids(eng)
    assert mid.min() > 1_300 and mid.max() < 2_800
    assert np.allclose(mid * 200, np.round(mid * 200), rtol=0, atol=1e-6)  # mids on the half-cent grid
    assert eng.captured is not None
    bid_px = eng.captured[:, 0, :]
    assert np.allclose(bid_px, np.round(bid_px, 2), rtol=0, atol=1e-9)
    summary = convert_day(path, tmp_path / "eth.parquet")
    assert summary is not None
    frame = pl.read_parquet(tmp_path / "eth.parquet")
    assert frame.height == 1440
    first = frame.row(0, named=True)
    assert 1_300 < first["mid_close"] < 2_800 and first["spread"] == pytest.approx(0.01, abs=0.035)


# --- BTCUSDT spot -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def btc_spot_and_linear(tmp_path_factory) -> tuple[Path, Path, Path]:
    out = tmp_path_factory.mktemp("btc")
    spot = generate_day(DAY, out, category="spot", seed=3, duration_s=SECONDS)
    linear = generate_day(DAY, out, seed=3, duration_s=SECONDS)
    return out, spot, linear


def test_btcusdt_spot_day(btc_spot_and_linear):
    out, spot, linear = btc_spot_and_linear
    assert spot == out / "spot" / "BTCUSDT" / "2025" / "2025-03-10_BTCUSDT_ob200.data.zip"
    assert spot.parent == download_folder(out, DAY, "BTCUSDT", "spot")  # where the platform looks
    assert linear == out / "2025" / "2025-03-10_BTCUSDT_ob200.data.zip"
    spot_msgs, linear_msgs = messages(spot), messages(linear)
    prices, sizes = numbers(spot_msgs)
    assert all(TRIMMED.match(x) for x in prices + sizes), [x for x in prices + sizes if not TRIMMED.match(x)][:5]
    assert any("." not in px for px in prices) and any("." in px for px in prices)  # "76344" and "76344.5"
    assert all(on_grid(px, Decimal("0.1")) for px in prices)
    # the same market as the linear day of the seed, written the spot way: equal numbers, other text
    assert len(spot_msgs) == len(linear_msgs)
    for s, v in zip(spot_msgs, linear_msgs, strict=True):
        assert (s["ts"], s["type"], s["data"]["u"]) == (v["ts"], v["type"], v["data"]["u"])
        for side in ("b", "a"):
            assert [(Decimal(p), Decimal(z)) for p, z in s["data"][side]] == \
                [(Decimal(p), Decimal(z)) for p, z in v["data"][side]]
    assert list(read_lines(spot)) != list(read_lines(linear))


def test_btcusdt_spot_engine_and_reference_agree(btc_spot_and_linear, tmp_path):
    _, spot, linear = btc_spot_and_linear
    eng_spot = engine_and_reference(spot)
    eng_linear = engine_and_reference(linear)
    assert mids(eng_spot).min() > 50_000 and mids(eng_spot).max() < 130_000
    assert eng_spot.captured is not None and eng_linear.captured is not None
    assert np.array_equal(eng_spot.captured, eng_linear.captured, equal_nan=True)  # "76344" == "76344.00"
    convert_day(spot, tmp_path / "spot.parquet")
    assert pl.read_parquet(tmp_path / "spot.parquet").height == 1440


# --- inverse, other symbols, the command line ---------------------------------------------------


def test_inverse_is_ob500_under_its_folder(tmp_path):
    path = generate_day(DAY, tmp_path, symbol="BTCUSD", category="inverse", seed=1, duration_s=3)
    assert path == tmp_path / "inverse" / "BTCUSD" / "2025" / "2025-03-10_BTCUSD_ob500.data.zip"
    msgs = messages(path)
    assert msgs[0]["topic"] == "orderbook.500.BTCUSD"
    assert len(msgs[0]["data"]["b"]) == 500
    prices, _ = numbers(msgs)
    assert all(FIXED_2.match(px) for px in prices)
    with pytest.raises(ValueError, match="category"):
        generate_day(DAY, tmp_path, category="option", duration_s=3)


def test_an_unlisted_symbol_replays_at_its_own_scale(tmp_path):
    inst = instrument("1000PEPEUSDT")
    path = generate_day(DAY, tmp_path, symbol="1000PEPEUSDT", seed=2, duration_s=SECONDS)
    prices, sizes = numbers(messages(path))
    tick = Decimal(1).scaleb(-inst.tick_decimals)
    assert all(re.fullmatch(rf"\d+\.\d{{{inst.price_decimals}}}", px) for px in prices)
    assert all(on_grid(px, tick) for px in prices)
    assert inst.size_decimals == 0 and all(sz.isdigit() for sz in sizes)  # whole coins, as cheap coins trade
    eng = engine_and_reference(path)
    mid = mids(eng)
    assert inst.start_range[0] * 0.9 < mid.min() and mid.max() < inst.start_range[1] * 1.1
    assert 1e-5 <= float(tick) / float(np.median(mid)) <= 1.5e-4


def test_generate_cli_symbol_and_category(tmp_path):
    argv = ["generate", "--start", DAY.isoformat(), "--out", str(tmp_path / "cli"), "--symbol", "ETHUSDT",
            "--category", "spot", "--duration-s", "5", "--seed", "4"]
    assert cli_main(argv) == 0
    expected = generate_day(DAY, tmp_path / "lib", symbol="ETHUSDT", category="spot", seed=4, duration_s=5)
    assert expected == tmp_path / "lib" / "spot" / "ETHUSDT" / "2025" / "2025-03-10_ETHUSDT_ob200.data.zip"
    written = tmp_path / "cli" / expected.relative_to(tmp_path / "lib")
    assert list(read_lines(written)) == list(read_lines(expected))
    prices, _ = numbers(messages(written))
    assert all(TRIMMED.match(px) for px in prices)
    assert cli_main(["generate", "--start", DAY.isoformat(), "--out", str(tmp_path / "bad"), "--symbol", "eth/usdt",
                     "--category", "spot", "--duration-s", "5"]) == 2
    assert not (tmp_path / "bad").exists()
