from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantgod_assets.labelling import (
    BUY,
    NEUTRAL,
    SELL,
    class_balance_problems,
    class_distribution,
    combine_distributions,
    config_line,
    distribution_line,
    label_day,
    label_day_files,
    label_suffix,
    labelled_distribution,
)
from quantgod_assets.orderbook.schema import book_columns

from .builders import make_day_frame, write_pre_days

DAY = dt.date(2025, 3, 14)
NEXT = DAY + dt.timedelta(days=1)
H = 60


def path_with(pairs: dict[int, float], base: float = 100.0, n: int = 1440) -> np.ndarray:
    prices = np.full(n, base)
    for minute, price in pairs.items():
        prices[minute] = price
    return prices


def targets_of(frame: pl.DataFrame) -> list:
    return frame["target"].to_list()


# --- thresholds ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (100.0, 99.6, SELL),  # exactly -0.4 %
        (100.0, 100.8, BUY),  # exactly +0.8 %
        (27000.1, 26892.0996, SELL),  # exactly -0.4 % in decimals; p2/p - 1 rounds to > -0.004
        (27001.4, 27217.4112, BUY),  # exactly +0.8 % in decimals; p2/p - 1 rounds to < 0.008
        (100.0, 99.61, NEUTRAL),
        (100.0, 100.79, NEUTRAL),
        (100.0, 99.0, SELL),
        (100.0, 101.0, BUY),
        (100.0, 100.0, NEUTRAL),
    ],
)
def test_thresholds_hit_exactly(start, end, expected):
    prices = path_with({0: start, H: end}, base=start)
    labelled = label_day(make_day_frame(DAY, prices), None, H, -0.004, 0.008)
    assert labelled["target"][0] == expected
    assert labelled["fwd_return"][0] == pytest.approx(end / start - 1, abs=1e-15)


def test_the_decimal_cases_really_round_the_wrong_way():
    # guards the two cases above: without the tolerance they would be NEUTRAL
    assert 26892.0996 / 27000.1 - 1 > -0.004
    assert 27217.4112 / 27001.4 - 1 < 0.008


@settings(max_examples=60, deadline=None)
@given(
    base=st.floats(1.0, 200_000.0),
    threshold=st.sampled_from([-0.004, -0.01, -0.0025, 0.008, 0.005, 0.012]),
)
def test_a_move_of_exactly_the_threshold_is_labelled_and_a_hair_less_is_not(base, threshold):
    short, long = (threshold, 0.008) if threshold < 0 else (-0.004, threshold)
    prices = np.full(4 + 2, base)
    prices[2] = base * (1 + threshold)  # row 0 -> row 2 (H = 2): exactly the threshold
    prices[3] = base * (1 + threshold * (1 - 1e-6))  # row 1 -> row 3: just inside
    frame = make_day_frame(DAY, prices)
    labelled = label_day(frame, None, 2, short, long)
    hit = SELL if threshold < 0 else BUY
    assert labelled["target"][0] == hit
    assert labelled["target"][1] == NEUTRAL


# --- day boundaries and missing prices ---------------------------------------------------------


def test_the_tail_is_labelled_from_the_next_day():
    today = make_day_frame(DAY, path_with({1439: 100.0}))
    tomorrow = make_day_frame(NEXT, path_with({H - 1: 99.0, 0: 101.0}))
    labelled = label_day(today, tomorrow, H)
    assert labelled.height == 1440
    assert labelled["target"].null_count() == 0
    assert labelled["target"][1439] == SELL  # 23:59 -> 00:59 of the next day: 100 -> 99
    assert labelled["target"][1440 - H] == BUY  # 23:00 -> 00:00: 100 -> 101
    assert labelled["fwd_return"][1439] == pytest.approx(-0.01)
    assert labelled.columns == [*book_columns(), "fwd_return", "target"]
    assert labelled.schema["fwd_return"] == pl.Float64 and labelled.schema["target"] == pl.Int8


def test_without_the_next_day_the_tail_is_null_never_neutral():
    labelled = label_day(make_day_frame(DAY), None, H)
    targets = labelled["target"]
    assert targets.tail(H).null_count() == H
    assert targets.head(1440 - H).null_count() == 0
    assert labelled["fwd_return"].tail(H).null_count() == H


def test_only_the_needed_part_of_the_next_day_is_used_and_it_must_follow():
    today = make_day_frame(DAY)
    tomorrow_prices = make_day_frame(NEXT).select("ts", "micro_price").head(H)
    assert label_day(today, tomorrow_prices, H)["target"].null_count() == 0
    with pytest.raises(ValueError, match="not after"):
        label_day(today, today, H)


def test_a_missing_price_now_or_at_the_horizon_gives_null():
    frame = make_day_frame(DAY, invalid_minutes=[100, 300])
    labelled = label_day(frame, make_day_frame(NEXT), H)
    nulls = set(np.flatnonzero(labelled["target"].is_null().to_numpy()))
    assert nulls == {100, 300, 100 - H, 300 - H}


def test_the_horizon_is_matched_by_time_not_by_row():
    # a frame with minutes 0..99 and 200..299: the rows before the gap have no price at t+H
    frame = make_day_frame(DAY)
    gappy = pl.concat([frame.slice(0, 100), frame.slice(200, 100)])
    labelled = label_day(gappy, None, H)
    missing = labelled["target"].is_null().to_numpy()
    assert not missing[: 100 - H].any()
    assert missing[100 - H : 100].all()  # their horizon falls into the gap
    assert not missing[100 : 200 - H].any()


def test_other_price_columns_and_bad_settings():
    frame = make_day_frame(DAY)
    by_mid = label_day(frame, None, 30, price_column="mid_close")
    assert by_mid["target"].tail(30).null_count() == 30
    with pytest.raises(ValueError):
        label_day(frame, None, H, price_column="nope")
    with pytest.raises(ValueError):
        label_day(frame, None, 0)
    with pytest.raises(ValueError):
        label_day(frame, None, H, 0.004, 0.008)


# --- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((60, -0.004, 0.008), "SELL_0004_BUY_0008_1h"),
        ((30, -0.004, 0.008), "SELL_0004_BUY_0008_30m"),
        ((90, -0.004, 0.008), "SELL_0004_BUY_0008_90m"),
        ((120, -0.004, 0.008), "SELL_0004_BUY_0008_2h"),
        ((15, -0.002, 0.003), "SELL_0002_BUY_0003_15m"),
        ((240, -0.01, 0.0125), "SELL_0010_BUY_00125_4h"),
    ],
)
def test_suffix_names(args, name):
    assert label_suffix(*args) == name


def test_suffixes_differ_when_settings_differ():
    names = {label_suffix(h, s, lo) for h in (30, 60, 90) for s in (-0.002, -0.004) for lo in (0.004, 0.008)}
    assert len(names) == 12


# --- distributions and the class-balance check ---------------------------------------------------


def test_distribution_counts_shares_and_log_lines():
    targets = pl.Series([0, 1, 1, 1, 2, None, 1, 1, 1, 1, 1], dtype=pl.Int8)
    dist = class_distribution(targets)
    assert dist["counts"] == {"SELL": 1, "NEUTRAL": 8, "BUY": 1}
    assert dist["labelled"] == 10 and dist["unlabelled"] == 1
    assert dist["shares"]["NEUTRAL"] == pytest.approx(0.8)
    assert distribution_line("2025-03-14.parquet", dist) == "2025-03-14.parquet → SELL: 10.0% | NEU: 80.0% | BUY: 10.0%"
    both = combine_distributions([dist, class_distribution(np.array([0, 0, -1]))])
    assert both["counts"] == {"SELL": 3, "NEUTRAL": 8, "BUY": 1} and both["unlabelled"] == 2
    assert distribution_line("FINAL DISTRIBUTION", both).startswith("FINAL DISTRIBUTION → SELL: 25.0% | NEU:")
    assert config_line(60, -0.004, 0.008) == "Config: lookahead=60, short=-0.004, long=0.008"


def test_class_balance_fails_on_a_one_class_day():
    flat = label_day(make_day_frame(DAY, np.full(1440, 100.0)), make_day_frame(NEXT, np.full(1440, 100.0)), H)
    dist = class_distribution(flat["target"])
    missing, rare = class_balance_problems(dist)
    assert missing == ["SELL", "BUY"] and rare == []


def test_class_balance_warns_on_a_rare_class_and_passes_a_balanced_day():
    targets = np.array([0] * 49 + [1] * 950 + [2] * 1)
    missing, rare = class_balance_problems(class_distribution(targets), min_share=0.02)
    assert missing == [] and rare == ["BUY"]
    assert class_balance_problems(class_distribution([0, 1, 2])) == ([], [])
    assert class_balance_problems(class_distribution([None, None])) == (["SELL", "NEUTRAL", "BUY"], [])


# --- files -----------------------------------------------------------------------------------


def test_label_day_files_writes_under_the_suffix_and_fills_the_tail_once_the_next_day_arrives(tmp_path):
    pre, out = tmp_path / "pre_processed", tmp_path / "labelled"
    write_pre_days(pre, [DAY])
    path = label_day_files(pre, out, DAY)
    assert path == out / "SELL_0004_BUY_0008_1h" / "2025-03-14.parquet"
    first = pl.read_parquet(path)
    assert first["target"].tail(H).null_count() == H
    assert pq.read_schema(path).metadata[b"quantgod.label.next_day"] == b"absent"

    make_day_frame(NEXT, seed=7).write_parquet(pre / "2025-03-15.parquet")
    assert label_day_files(pre, out, "2025-03-14") == path
    second = pl.read_parquet(path)
    assert second["target"].null_count() == 0
    assert second.head(1440 - H).equals(first.head(1440 - H))
    assert pq.read_schema(path).metadata[b"quantgod.label.next_day"] == b"present"
    assert sorted(p.name for p in path.parent.iterdir()) == ["2025-03-14.parquet"]  # no temp files left

    other = label_day_files(pre, out, DAY, lookahead=30)
    assert other.parent.name == "SELL_0004_BUY_0008_30m" and path.exists()


def test_labelled_days_and_the_duckdb_distribution(tmp_path):
    pre, out = tmp_path / "pre", tmp_path / "labelled"
    days = [DAY + dt.timedelta(days=k) for k in range(3)]
    write_pre_days(pre, days)
    paths = [label_day_files(pre, out, day) for day in days]
    assert [p.name for p in paths] == [f"{d}.parquet" for d in days]
    per_day = [class_distribution(pl.read_parquet(p)["target"]) for p in paths]
    assert labelled_distribution(out / label_suffix()) == combine_distributions(per_day)
    assert per_day[-1]["unlabelled"] == H and per_day[0]["unlabelled"] == 0
    with pytest.raises(FileNotFoundError):
        label_day_files(pre, out, DAY - dt.timedelta(days=1))
