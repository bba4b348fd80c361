"""Moving-block bootstrap: coverage on correlated series, pairing, determinism, chunking, verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quantgod_assets.ml.metrics import confusion_matrix, metric_from_confusion
from quantgod_assets.ml.uncertainty import (
    Interval,
    block_bootstrap_indices,
    compounded_return_interval,
    difference_interval,
    is_edge,
    iter_block_bootstrap,
    mean_interval,
    metric_interval,
    verdict,
)


def correlated_predictions(reps: int, n: int, phi: float, threshold: float, seed: int):
    """`reps` label series whose correctness follows a thresholded stationary AR(1): each sample
    is right with probability Phi(threshold) exactly, but right and wrong come in long runs, like
    windows that share most of their label horizon. Returns (y_true, y_pred, true accuracy)."""
    rng = np.random.default_rng(seed)
    latent = np.empty((reps, n))
    latent[:, 0] = rng.normal(size=reps)
    noise = rng.normal(size=(reps, n)) * math.sqrt(1 - phi**2)  # keeps the marginal N(0, 1)
    for t in range(1, n):
        latent[:, t] = phi * latent[:, t - 1] + noise[:, t]
    y_true = rng.integers(0, 3, (reps, n))
    y_pred = np.where(latent < threshold, y_true, (y_true + 1) % 3)
    accuracy = 0.5 * (1 + math.erf(threshold / math.sqrt(2)))
    return y_true, y_pred, accuracy


def coverage_and_width(y_true, y_pred, truth, block, resamples):
    intervals = [
        metric_interval(t, p, "accuracy", block=block, resamples=resamples, seed=i)
        for i, (t, p) in enumerate(zip(y_true, y_pred))
    ]
    covered = np.mean([iv.low <= truth <= iv.high for iv in intervals])
    return float(covered), float(np.mean([iv.width for iv in intervals]))


# --- indices ---------------------------------------------------------------------------------


def test_indices_are_runs_of_consecutive_rows_from_valid_starts():
    n, block = 103, 10
    indices = block_bootstrap_indices(n, block, 40, np.random.default_rng(0))
    assert indices.shape == (40, n) and indices.dtype == np.int64
    assert indices.min() >= 0 and indices.max() <= n - 1
    starts = indices[:, ::block]
    assert starts.max() <= n - block  # a block never runs off the end
    # inside each block, the indices step by one
    for row in indices:
        for first in range(0, n, block):
            np.testing.assert_array_equal(np.diff(row[first : first + block]), 1)


def test_every_start_position_is_drawn():
    indices = block_bootstrap_indices(20, 5, 500, np.random.default_rng(1))
    assert set(np.unique(indices[:, ::5]).tolist()) == set(range(16))


def test_a_block_as_long_as_the_series_resamples_nothing():
    indices = block_bootstrap_indices(30, 500, 7, np.random.default_rng(2))
    np.testing.assert_array_equal(indices, np.tile(np.arange(30), (7, 1)))
    # ... so no interval is given below MIN_BLOCKS blocks: a collapsed one would read "significant"
    values = np.random.default_rng(3).normal(size=30) + 1.0
    interval = mean_interval(values, block=500, resamples=50)
    assert interval.estimate == pytest.approx(values.mean()) and not interval.known
    assert not is_edge(interval) and interval.note == "30 samples < 10 blocks of 500"
    assert verdict("edge over persistence", interval).endswith("[n/a]: n/a (30 samples < 10 blocks of 500)")
    assert mean_interval(np.tile(values, 20), block=60, resamples=50).known  # 600 samples: 10 blocks


def test_a_block_below_one_is_one_iid_draw_per_row():
    indices = block_bootstrap_indices(50, 0, 20, np.random.default_rng(4))
    assert indices.shape == (20, 50)
    assert (np.abs(np.diff(indices, axis=1)) != 1).any()  # not runs: independent rows


def test_chunks_continue_one_random_stream():
    whole = block_bootstrap_indices(77, 6, 23, np.random.default_rng(5))
    chunked = np.concatenate(list(iter_block_bootstrap(77, 6, 23, np.random.default_rng(5), chunk=4)))
    np.testing.assert_array_equal(whole, chunked)


# --- coverage --------------------------------------------------------------------------------


def test_block_interval_covers_the_true_accuracy_about_as_often_as_it_claims():
    y_true, y_pred, truth = correlated_predictions(reps=150, n=2000, phi=0.8, threshold=0.5, seed=0)
    covered, _ = coverage_and_width(y_true, y_pred, truth, block=40, resamples=150)
    assert 0.85 <= covered <= 0.99


def test_iid_bootstrap_on_correlated_data_is_too_narrow():
    y_true, y_pred, truth = correlated_predictions(reps=100, n=1000, phi=0.95, threshold=0.5, seed=1)
    block_covered, block_width = coverage_and_width(y_true, y_pred, truth, block=50, resamples=150)
    iid_covered, iid_width = coverage_and_width(y_true, y_pred, truth, block=1, resamples=150)
    assert block_width > 2 * iid_width
    assert iid_covered < 0.6 < block_covered


# --- intervals -------------------------------------------------------------------------------


def test_interval_contains_the_full_sample_estimate():
    y_true, y_pred, _ = correlated_predictions(reps=1, n=3000, phi=0.8, threshold=0.3, seed=2)
    for metric in ("f1_macro", "f1_weighted", "accuracy", "balanced_accuracy"):
        interval = metric_interval(y_true[0], y_pred[0], metric, block=30, resamples=300)
        expected = metric_from_confusion(metric, confusion_matrix(y_true[0], y_pred[0]))
        assert interval.estimate == pytest.approx(expected)
        assert interval.low < interval.estimate < interval.high
        assert interval.confidence == 0.95


def test_a_higher_confidence_gives_a_wider_interval():
    values = np.random.default_rng(6).normal(size=500)
    narrow = mean_interval(values, block=10, resamples=400, confidence=0.8)
    wide = mean_interval(values, block=10, resamples=400, confidence=0.99)
    assert wide.low < narrow.low and wide.high > narrow.high


def test_same_seed_same_interval_other_seed_other_interval():
    y_true, y_pred, _ = correlated_predictions(reps=1, n=1500, phi=0.8, threshold=0.3, seed=3)
    first = metric_interval(y_true[0], y_pred[0], block=20, resamples=200, seed=11)
    again = metric_interval(y_true[0], y_pred[0], block=20, resamples=200, seed=11)
    other = metric_interval(y_true[0], y_pred[0], block=20, resamples=200, seed=12)
    assert first == again
    assert (first.low, first.high) != (other.low, other.high)


def test_chunked_and_single_chunk_intervals_are_identical():
    y_true, y_pred, _ = correlated_predictions(reps=1, n=1200, phi=0.8, threshold=0.3, seed=4)
    one = metric_interval(y_true[0], y_pred[0], block=25, resamples=120, seed=9, chunk=120)
    many = metric_interval(y_true[0], y_pred[0], block=25, resamples=120, seed=9, chunk=7)
    assert one == many
    returns = np.random.default_rng(8).normal(0.001, 0.01, 300)
    assert compounded_return_interval(returns, resamples=90, chunk=90) == compounded_return_interval(
        returns, resamples=90, chunk=13
    )


def test_paired_difference_of_identical_predictions_is_exactly_zero():
    y_true, y_pred, _ = correlated_predictions(reps=1, n=1000, phi=0.8, threshold=0.3, seed=5)
    interval = difference_interval(y_true[0], y_pred[0], y_pred[0].copy(), block=20, resamples=200)
    assert (interval.estimate, interval.low, interval.high) == (0.0, 0.0, 0.0)


def test_paired_difference_is_tighter_than_the_separate_intervals_suggest():
    y_true, pred_a, _ = correlated_predictions(reps=1, n=2000, phi=0.8, threshold=0.5, seed=6)
    pred_b = pred_a[0].copy()
    pred_b[::10] = (pred_b[::10] + 1) % 3  # b = a with one sample in ten spoiled
    a = metric_interval(y_true[0], pred_a[0], "accuracy", block=30, resamples=300)
    b = metric_interval(y_true[0], pred_b, "accuracy", block=30, resamples=300)
    diff = difference_interval(y_true[0], pred_a[0], pred_b, "accuracy", block=30, resamples=300)
    assert diff.estimate == pytest.approx(a.estimate - b.estimate)
    assert diff.width < 0.5 * min(a.width, b.width)
    assert is_edge(diff)  # a is better on every resample that b's spoiled samples touch


def test_compounded_return_interval_compounds_and_mean_interval_averages():
    returns = np.array([0.01, -0.005, 0.02, 0.0, 0.003] * 20)
    compounded = compounded_return_interval(returns, resamples=300)
    assert compounded.estimate == pytest.approx(np.prod(1 + returns) - 1)
    assert compounded.low < compounded.estimate < compounded.high
    mean = mean_interval(returns, block=5, resamples=300)
    assert mean.estimate == pytest.approx(returns.mean())
    # any 5 consecutive returns are a rotation of the repeating pattern: every resample has its mean
    assert mean.low == pytest.approx(returns.mean()) and mean.high == pytest.approx(returns.mean())
    assert mean_interval(returns, block=3, resamples=300).width > 0


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        mean_interval(np.array([]))
    with pytest.raises(ValueError):
        mean_interval(np.array([1.0, np.nan]))
    with pytest.raises(ValueError):
        metric_interval(np.array([0, 1]), np.array([0, 3]))
    with pytest.raises(ValueError):
        metric_interval(np.array([0, 1]), np.array([0]))
    with pytest.raises(ValueError):
        mean_interval(np.arange(20.0), block=1, confidence=1.5)
    with pytest.raises(ValueError):
        metric_interval(np.array([0, 1] * 10), np.array([0, 1] * 10), metric="loss", block=1)


# --- reading an interval ---------------------------------------------------------------------


def test_verdicts_for_an_edge_no_edge_and_a_loss():
    assert verdict("edge over persistence", Interval(0.052, -0.081, 0.190, 0.95)) == (
        "edge over persistence: +0.052 [-0.081, +0.190]: not significant"
    )
    assert verdict("edge over majority", Interval(0.21, 0.15, 0.27, 0.95)) == (
        "edge over majority: +0.210 [+0.150, +0.270]: significant"
    )
    assert verdict("edge over logistic", Interval(-0.12, -0.2, -0.04, 0.95)) == (
        "edge over logistic: -0.120 [-0.200, -0.040]: significantly worse"
    )


def test_interval_helpers():
    worse = Interval(-0.12, -0.2, -0.04, 0.95)
    unclear = Interval(0.05, -0.08, 0.19, 0.95)
    better = Interval(0.21, 0.15, 0.27, 0.95)
    assert [is_edge(i) for i in (worse, unclear, better)] == [False, False, True]
    assert [i.excludes_zero for i in (worse, unclear, better)] == [True, False, True]
    assert better.above(0.1) and not better.above(0.2)
    assert unclear.format() == "0.050 [-0.080, 0.190]"
    assert better.format(digits=2) == "0.21 [0.15, 0.27]"
    assert unclear.width == pytest.approx(0.27)
    assert unclear.to_dict() == {"estimate": 0.05, "low": -0.08, "high": 0.19, "confidence": 0.95}
