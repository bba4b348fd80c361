from __future__ import annotations

import numpy as np
import pytest

from quantgod_assets.ml.baselines import (
    fit_logistic,
    logistic_baseline,
    majority_baseline,
    persistence_baseline,
    run_baselines,
)
from quantgod_assets.ml.metrics import classification_scores, confusion_matrix, macro_f1, per_class_f1
from quantgod_assets.ml.splits import train_val_test_split

# --- metrics ---------------------------------------------------------------------------------


def test_confusion_and_f1_by_hand():
    y_true = np.array([0, 0, 1, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 2])
    cm = confusion_matrix(y_true, y_pred)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 1], [0, 0, 1]]
    # SELL: p=1, r=1/2 -> 2/3; NEUTRAL: p=2/3, r=2/3 -> 2/3; BUY: p=1/2, r=1 -> 2/3
    np.testing.assert_allclose(per_class_f1(cm), [2 / 3, 2 / 3, 2 / 3])
    assert macro_f1(y_true, y_pred) == pytest.approx(2 / 3)
    scores = classification_scores(y_true, y_pred)
    assert scores["support"] == {"SELL": 2, "NEUTRAL": 3, "BUY": 1} and scores["n"] == 6


def test_an_absent_class_counts_as_zero_in_the_macro_mean():
    y = np.array([1, 1, 1, 1])
    assert per_class_f1(confusion_matrix(y, y)).tolist() == [0.0, 1.0, 0.0]
    assert macro_f1(y, y) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]))


# --- baselines -------------------------------------------------------------------------------


def planted(n: int = 30_000, width: int = 12, seed: int = 0):
    """Features with a signal: feature 0 above / below cut-offs decides the class, noisily."""
    rng = np.random.default_rng(seed)
    features = rng.normal(0, 1, (n, width)).astype(np.float32)
    features[:, 3] = features[:, 3] * 50 + 1000  # a feature far from unit scale
    score = features[:, 0] + rng.normal(0, 0.4, n)
    targets = np.where(score < -1.0, 0, np.where(score > 1.2, 2, 1)).astype(np.int8)
    return features, targets


def test_logistic_beats_majority_on_a_planted_signal():
    features, targets = planted()
    ends = np.arange(features.shape[0])
    split = train_val_test_split(ends, lookahead=60, seq_len=1)
    majority = majority_baseline(targets, split.train, split.val)
    logistic = logistic_baseline(features, targets, split.train, split.val)
    assert majority.f1["NEUTRAL"] > 0 and majority.f1["SELL"] == majority.f1["BUY"] == 0
    assert majority.macro_f1 < 0.35
    assert logistic.macro_f1 > 0.6
    assert logistic.macro_f1 > majority.macro_f1 + 0.25
    assert set(logistic.to_dict()) == {"macro_f1", "f1_SELL", "f1_NEUTRAL", "f1_BUY", "n"}


def test_logistic_on_noise_learns_nothing_much_and_is_deterministic():
    rng = np.random.default_rng(3)
    features = rng.normal(0, 1, (6000, 5)).astype(np.float32)
    targets = rng.integers(0, 3, 6000).astype(np.int8)
    ends = np.arange(6000)
    first = fit_logistic(features, targets, ends[:4000])
    second = fit_logistic(features, targets, ends[:4000])
    np.testing.assert_array_equal(first.weight, second.weight)
    result = logistic_baseline(features, targets, ends[:4000], ends[4500:], model=first)
    assert result.macro_f1 < 0.45


def test_persistence_predicts_the_label_known_at_t():
    lookahead = 5
    rng = np.random.default_rng(2)
    blocks = rng.integers(0, 3, 400)
    targets = np.repeat(blocks, 50).astype(np.int8)  # long runs: yesterday's label mostly holds
    ends = np.arange(targets.size)
    result = persistence_baseline(targets, ends[:10_000], ends[10_000:], lookahead)
    expected = targets[ends[10_000:] - lookahead]
    np.testing.assert_array_equal(result.predictions, expected)
    assert result.macro_f1 > 0.85
    # with times: the row H minutes earlier missing (a gap) -> the training majority class
    minutes = np.arange(targets.size, dtype=np.int64)
    minutes[15_000:] += 1000
    gapped = persistence_baseline(targets, ends[:10_000], ends[15_000:15_010], lookahead, minutes)
    majority = np.bincount(targets[:10_000]).argmax()
    assert (gapped.predictions[:lookahead] == majority).all()
    np.testing.assert_array_equal(gapped.predictions[lookahead:], targets[15_000:15_005])
    # and a known label that is null falls back too
    nulls = targets.copy()
    nulls[11_000 - lookahead] = -1
    assert persistence_baseline(nulls, ends[:10_000], np.array([11_000]), lookahead).predictions[0] == \
        np.bincount(targets[:10_000]).argmax()


def test_run_baselines_on_a_split_scores_validation_only_by_default():
    features, targets = planted(n=12_000)
    split = train_val_test_split(np.arange(12_000), lookahead=60, seq_len=1)
    results = run_baselines(features, targets, split, lookahead=60)
    assert set(results) == {"majority", "persistence", "logistic"}
    assert all(set(r) == {"val"} for r in results.values())
    assert results["logistic"]["val"].macro_f1 > results["majority"]["val"].macro_f1
    with_test = run_baselines(features, targets, split, lookahead=60, on=("val", "test"))
    assert with_test["majority"]["test"].n == split.test.size
