"""ml/live.py and plots.live_performance_png: live macro-F1 against the baselines, input PSI, the picture."""

from __future__ import annotations

import datetime as dt
import json
import math
import struct

import numpy as np
import polars as pl
import pytest

from quantgod_assets.ml.live import feature_bins, live_report, psi, psi_by_feature
from quantgod_assets.ml.metrics import macro_f1
from quantgod_assets.plots import live_performance_png

DAY0 = dt.date(2024, 3, 1)  # the day before the live days: labels only
DAY1, DAY2, DAY3 = (DAY0 + dt.timedelta(days=k) for k in (1, 2, 3))
NAMES = ["mid_logret_bps", "spread_bps"]
PRIORS = (0.3, 0.4, 0.3)  # NEUTRAL the most frequent: persistence's fallback


def _ts(day: dt.date, n: int = 1440, step_s: int = 60) -> pl.Series:
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    return pl.Series("ts", [start + dt.timedelta(seconds=step_s * i) for i in range(n)],
                     dtype=pl.Datetime("ms", "UTC"))


def _labels(day: dt.date, target, step_s: int = 60) -> pl.DataFrame:
    target = list(target)
    return pl.DataFrame({"ts": _ts(day, len(target), step_s), "target": pl.Series(target, dtype=pl.Int8)})


def _predictions(day: dt.date, predicted, step_s: int = 60) -> pl.DataFrame:
    predicted = list(predicted)
    return pl.DataFrame({"ts": _ts(day, len(predicted), step_s), "predicted": pl.Series(predicted, dtype=pl.Int64)})


def _blocks(minutes: int, classes=(0, 1, 2), n: int = 1440) -> np.ndarray:
    """Classes in turn, each held for `minutes` minutes."""
    return np.asarray(classes)[(np.arange(n) // minutes) % len(classes)]


def _training(seed: int = 1, n: int = 100_000) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, len(NAMES))).astype(np.float32)


BINS = feature_bins(_training())


def _report(truth: dict, predicted: dict, features: dict | None = None, **kwargs):
    days = sorted(predicted)
    labels = {day: _labels(day, y) for day, y in truth.items()}
    preds = {day: _predictions(day, p) for day, p in predicted.items()}
    kwargs.setdefault("lookahead", 30)
    return live_report(days, labels, preds, features or {}, NAMES, BINS, PRIORS, **kwargs)


# --- PSI -------------------------------------------------------------------------------------


def test_feature_bins_are_the_deciles_of_the_finite_values_of_the_chosen_rows():
    x = np.arange(200, dtype=np.float32).reshape(100, 2)
    x[0, 0], x[1, 1] = np.nan, np.inf
    bins = feature_bins(x)
    assert bins.shape == (2, 9) and bins.dtype == np.float32
    np.testing.assert_allclose(bins[0], np.percentile(x[1:, 0], np.arange(10, 100, 10)), rtol=1e-6)
    mask = np.arange(100) >= 50
    np.testing.assert_array_equal(feature_bins(x, mask), feature_bins(x, np.flatnonzero(mask)))
    np.testing.assert_allclose(feature_bins(x, mask)[0], np.percentile(x[50:, 0], np.arange(10, 100, 10)), rtol=1e-6)
    assert np.isnan(feature_bins(np.full((5, 1), np.nan))).all()


def test_psi_by_hand():
    edges = np.arange(1, 10, dtype=np.float64)
    assert psi(np.arange(10) + 0.5, edges) == pytest.approx(0.0)  # one value in each bin
    everything_low = np.zeros(50)
    expected = 0.9 * math.log(10) + 9 * (1e-4 - 0.1) * math.log(1e-4 / 0.1)  # shares floored at 1e-4
    assert psi(everything_low, edges) == pytest.approx(expected)
    assert math.isnan(psi(np.array([np.nan, np.inf]), edges))


def test_psi_is_near_zero_on_the_training_distribution_and_large_after_a_two_sigma_shift():
    fresh = np.random.default_rng(2).normal(size=20_000)
    assert psi(fresh, BINS[0]) < 0.02
    assert psi(fresh + 2.0, BINS[0]) > 0.5
    shifted = np.random.default_rng(3).normal(size=(20_000, 2))
    shifted[:, 1] += 2.0
    by_name = psi_by_feature(shifted, BINS, NAMES)
    assert by_name["mid_logret_bps"] < 0.02 < 0.5 < by_name["spread_bps"]


def test_a_point_mass_in_training_is_not_read_as_drift():
    # 60 % zeros (minutes without a trade): six equal deciles; unmerged, all zeros land in one bin
    rng = np.random.default_rng(4)
    def draw(n):
        return np.where(rng.random(n) < 0.6, 0.0, np.abs(rng.normal(size=n)))
    bins = feature_bins(draw(100_000)[:, None])
    assert (bins[0] == 0).sum() >= 5
    assert psi(draw(20_000), bins[0]) < 0.02
    assert psi(draw(20_000) + 1.0, bins[0]) > 0.5  # and a shift still shows


def test_psi_by_feature_leaves_out_rows_with_a_non_finite_value():
    x = np.random.default_rng(5).normal(size=(5_000, 2))
    with_bad_rows = np.vstack([x, np.tile([[np.nan, 10.0]], (5_000, 1))])  # would be all in the top bin
    assert psi_by_feature(with_bad_rows, BINS, NAMES) == psi_by_feature(x, BINS, NAMES)


# --- the report ------------------------------------------------------------------------------


def test_a_perfect_model_beats_persistence_on_labels_that_flip_every_30_minutes():
    y = _blocks(30)  # SELL, NEUTRAL, BUY, 30 minutes each: the label 30 minutes ago is always wrong
    features = {DAY1: np.random.default_rng(6).normal(size=(1440, 2)).astype(np.float32)}
    report = _report({DAY1: y}, {DAY1: y}, features, lookahead=30)
    day = report.days[0]
    assert (day.n, day.model_f1) == (1440, 1.0)
    assert day.persistence_f1 < 0.1
    assert report.rolling["model"] == [1.0] and report.rolling["persistence"] == [day.persistence_f1]
    assert not report.model_below_persistence and not report.drifted
    assert report.warnings() == []


def test_a_model_with_sell_and_buy_swapped_is_below_persistence_and_says_so():
    y = _blocks(360)  # six-hour regimes: the label 5 minutes ago is nearly always right
    opposite = np.array([2, 1, 0])[y]
    report = _report({DAY1: y}, {DAY1: opposite}, lookahead=5)
    assert report.days[0].model_f1 == pytest.approx(1 / 3)  # NEUTRAL right, SELL and BUY never
    assert report.days[0].persistence_f1 > 0.95
    assert report.model_below_persistence
    (line,) = report.warnings()
    assert line == (f"live macro-F1 {1 / 3:.3f} over the last 7 day(s) is below persistence's "
                    f"{report.rolling['persistence'][-1]:.3f}")


def test_drift_of_one_feature_over_the_last_window_is_flagged_and_named():
    rng = np.random.default_rng(7)
    calm = {d: rng.normal(size=(1440, 2)).astype(np.float32) for d in (DAY1, DAY2)}
    y = {d: _blocks(60) for d in (DAY1, DAY2)}
    assert not _report(y, y, calm).drifted
    moved = {DAY1: calm[DAY1], DAY2: calm[DAY2] + np.float32([0.0, 2.0])}
    report = _report(y, y, moved, window_days=1)
    assert report.days[0].psi_max < 0.05 < 0.5 < report.days[1].psi_max
    assert report.days[1].psi_mean == pytest.approx(np.mean(list(report.psi.values())))
    assert report.drifted and report.psi["spread_bps"] > 0.5 > report.psi["mid_logret_bps"]
    (line,) = report.warnings()
    assert line.startswith(f"input drift: PSI {report.psi['spread_bps']:.2f} of spread_bps above 0.25")
    assert line.endswith("over the last 1 day(s)")


def test_rolling_macro_f1_pools_the_rows_of_the_window():
    neutral_only = np.ones(1440, dtype=np.int64)  # SELL and BUY absent: their F1 counts as 0
    mixed = _blocks(60)
    truth = {DAY1: neutral_only, DAY2: mixed, DAY3: mixed}
    report = _report(truth, truth, window_days=2)  # a perfect model
    daily = [d.model_f1 for d in report.days]
    assert daily == pytest.approx([1 / 3, 1.0, 1.0])
    assert report.rolling["model"][1] == pytest.approx(1.0)  # the pool holds all classes, all right
    assert report.rolling["model"][1] != pytest.approx(np.mean(daily[:2]))
    pooled = macro_f1(np.concatenate([mixed, mixed]), np.concatenate([mixed, mixed]))
    assert report.rolling["model"][2] == pytest.approx(pooled)  # DAY1 left the window


def test_the_window_counts_calendar_days_not_list_positions():
    y = _blocks(60)
    gap = {DAY1: y, DAY3: np.ones(1440, dtype=np.int64)}  # DAY2 missing altogether
    report = _report(gap, gap, window_days=2)
    # DAY3's window is DAY2 and DAY3: NEUTRAL alone (1/3), not pooled with DAY1's classes (1.0)
    assert report.rolling["model"] == pytest.approx([1.0, 1 / 3])


def test_persistence_looks_back_across_midnight_into_the_day_before():
    lookahead = 10
    day0 = np.full(1440, 2)  # BUY all of the day before
    y = np.where(np.arange(1440) < 720, 0, 1)  # then SELL, then NEUTRAL
    labels = {DAY0: _labels(DAY0, day0), DAY1: _labels(DAY1, y)}
    preds = {DAY1: _predictions(DAY1, y)}
    with_day0 = live_report([DAY1], labels, preds, {}, NAMES, BINS, PRIORS, lookahead)
    expected = np.concatenate([day0[-lookahead:], y[:-lookahead]])  # 23:50..23:59 of DAY0, then DAY1
    assert with_day0.days[0].persistence_f1 == pytest.approx(macro_f1(y, expected))
    without = live_report([DAY1], {DAY1: labels[DAY1]}, preds, {}, NAMES, BINS, PRIORS, lookahead)
    fallback = np.concatenate([np.ones(lookahead, dtype=np.int64), y[:-lookahead]])  # NEUTRAL: argmax of PRIORS
    assert without.days[0].persistence_f1 == pytest.approx(macro_f1(y, fallback))
    assert with_day0.days[0].persistence_f1 != pytest.approx(without.days[0].persistence_f1)


def test_only_minutes_with_both_a_prediction_and_a_label_are_scored():
    y = _blocks(60).astype(float)
    y[:100] = np.nan  # not yet realised
    labels = {DAY1: _labels(DAY1, [None if np.isnan(v) else int(v) for v in y])}
    predicted = [None] * 40 + list(_blocks(60)[40:1400])  # the last 40 minutes not predicted
    report = live_report([DAY1, DAY2], labels, {DAY1: _predictions(DAY1, predicted)}, {}, NAMES, BINS,
                         PRIORS, lookahead=5)
    assert [d.n for d in report.days] == [1300, 0]
    assert report.days[0].model_f1 == 1.0 and math.isnan(report.days[1].model_f1)
    assert report.rolling["model"] == [1.0, 1.0]  # DAY2 has nothing; the window still holds DAY1
    summary = report.summary()
    json.dumps(summary, allow_nan=False)  # NaN written as None
    assert summary["daily_f1"]["model"] == [1.0, None] and summary["n"] == [1300, 0]


def test_a_window_without_scored_minutes_is_a_warning():
    labels = {DAY1: _labels(DAY1, _blocks(60))}
    report = live_report([DAY1], labels, {}, {}, NAMES, BINS, PRIORS, lookahead=5)
    assert report.days[0].n == 0 and not report.model_below_persistence
    assert report.warnings() == ["no live minute with both a prediction and a label over the last 7 day(s)"]
    empty = live_report([], {}, {}, {}, NAMES, BINS, PRIORS, lookahead=5)
    assert empty.days == [] and not empty.model_below_persistence and empty.warnings() == []


def test_stratified_draws_at_the_training_priors_and_is_reproducible_by_seed():
    # a day of one true class k: the stratified macro-F1 is f = 2p / (3 (1 + p)), p the share drawn as k
    priors, n, step_s = (0.2, 0.5, 0.3), 21_600, 4
    days = [DAY1, DAY2, DAY3]
    labels = {d: _labels(d, np.full(n, k), step_s) for k, d in enumerate(days)}
    preds = {d: _predictions(d, np.full(n, k), step_s) for k, d in enumerate(days)}

    def run(seed):
        return live_report(days, labels, preds, {}, NAMES, BINS, priors, lookahead=1, seed=seed)

    report = run(0)
    shares = [3 * d.stratified_f1 / (2 - 3 * d.stratified_f1) for d in report.days]
    np.testing.assert_allclose(shares, priors, atol=0.015)
    assert [d.stratified_f1 for d in run(0).days] == [d.stratified_f1 for d in report.days]
    assert run(0).rolling["stratified"] == report.rolling["stratified"]
    assert [d.stratified_f1 for d in run(1).days] != [d.stratified_f1 for d in report.days]


# --- the picture -----------------------------------------------------------------------------


def test_live_performance_png_is_a_wide_png():
    days = [DAY1 + dt.timedelta(days=k) for k in range(10)]
    rolling = {"model": [0.5] * 10, "persistence": [0.5] * 10, "stratified": [0.33] * 10}
    png = live_performance_png(days, rolling, [0.1, 0.4, *[float("nan")] * 8], 0.25, "live BTCUSDT")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert width >= 1000 and 400 < height < width
    empty = live_performance_png([], {"model": []}, [], 0.25, "no days")
    assert struct.unpack(">I", empty[16:20])[0] >= 1000
