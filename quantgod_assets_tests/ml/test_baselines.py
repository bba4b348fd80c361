from __future__ import annotations

import numpy as np
import pytest

from quantgod_assets.ml.baselines import (
    fit_logistic,
    logistic_baseline,
    majority_baseline,
    persistence_baseline,
    run_baselines,
    stratified_baseline,
)
from quantgod_assets.ml.metrics import (
    class_priors,
    classification_scores,
    confusion_matrix,
    macro_f1,
    per_class_f1,
)
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
    # per class precision and recall are logged beside F1
    per_class = {f"{score}_{name}" for score in ("f1", "precision", "recall") for name in ("SELL", "NEUTRAL", "BUY")}
    assert set(logistic.to_dict()) == {"macro_f1", "n"} | per_class


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
    assert list(results) == ["majority", "stratified", "persistence", "logistic"]
    assert all(set(r) == {"val"} for r in results.values())
    assert results["logistic"]["val"].macro_f1 > results["majority"]["val"].macro_f1
    with_test = run_baselines(features, targets, split, lookahead=60, on=("val", "test"))
    assert with_test["majority"]["test"].n == split.test.size
    assert with_test["stratified"]["test"].n == split.test.size
    # any part of the split can be scored, e.g. the training ends (in-sample reference)
    small_split = train_val_test_split(np.arange(3000), lookahead=60, seq_len=1)
    on_train = run_baselines(features[:3000], targets[:3000], small_split, lookahead=60, on=("train",))
    assert set(on_train["persistence"]) == {"train"}
    assert on_train["persistence"]["train"].n == small_split.train.size
    with pytest.raises(ValueError, match="unknown split parts"):
        run_baselines(features, targets, split, lookahead=60, on=("validation",))


def imbalanced_labels(n: int, priors, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).choice(3, size=n, p=priors).astype(np.int8)


def test_stratified_predictions_follow_the_training_priors():
    priors = np.array([0.15, 0.7, 0.15])
    targets = imbalanced_labels(60_000, priors, seed=4)
    ends = np.arange(targets.size)
    result = stratified_baseline(targets, ends[:20_000], ends[20_000:], seed=1)
    train_priors = class_priors(targets[:20_000])
    observed = np.bincount(result.predictions, minlength=3)
    expected = train_priors * result.predictions.size
    chi_square = float(((observed - expected) ** 2 / expected).sum())
    assert chi_square < 13.8  # 2 degrees of freedom: p < 0.001 above this
    assert result.name == "stratified" and result.n == 40_000


def test_stratified_is_deterministic_by_seed():
    targets = imbalanced_labels(5000, [0.3, 0.4, 0.3], seed=5)
    ends = np.arange(targets.size)
    first = stratified_baseline(targets, ends[:3000], ends[3000:], seed=7)
    again = stratified_baseline(targets, ends[:3000], ends[3000:], seed=7)
    other = stratified_baseline(targets, ends[:3000], ends[3000:], seed=8)
    np.testing.assert_array_equal(first.predictions, again.predictions)
    assert (first.predictions != other.predictions).any()


def test_stratified_scores_chance_and_beats_majority_under_imbalance():
    # balanced and independent of the labels: every class F1 is about 1/3
    balanced = imbalanced_labels(60_000, [1 / 3, 1 / 3, 1 / 3], seed=6)
    ends = np.arange(balanced.size)
    chance = stratified_baseline(balanced, ends[:30_000], ends[30_000:], seed=2)
    assert chance.macro_f1 == pytest.approx(1 / 3, abs=0.02)
    # imbalanced: majority scores F1 0 on two classes, random-at-priors does not
    skewed = imbalanced_labels(60_000, [0.2, 0.6, 0.2], seed=7)
    stratified = stratified_baseline(skewed, ends[:30_000], ends[30_000:], seed=2)
    majority = majority_baseline(skewed, ends[:30_000], ends[30_000:])
    assert stratified.macro_f1 > majority.macro_f1 + 0.05
    with pytest.raises(ValueError):
        stratified_baseline(skewed, ends[:0], ends[30_000:])


def test_results_carry_per_class_precision_and_recall():
    targets = np.array([0, 1, 1, 1, 2, 1, 1, 0], dtype=np.int8)
    ends = np.arange(targets.size)
    result = majority_baseline(targets, ends, ends)  # always NEUTRAL
    assert result.recall == {"SELL": 0.0, "NEUTRAL": 1.0, "BUY": 0.0}
    assert result.precision == {"SELL": 0.0, "NEUTRAL": 5 / 8, "BUY": 0.0}
    flat = result.to_dict()
    assert flat["precision_NEUTRAL"] == pytest.approx(5 / 8) and flat["recall_SELL"] == 0.0
