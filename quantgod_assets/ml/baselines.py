"""Reference scores every model is logged next to, computed on the same window ends.

- majority:    always the most frequent class of the training ends.
- stratified:  random classes drawn at the training ends' class priors (seeded). Under macro-F1
               this beats "majority" (which scores 0 on two of three classes), so it is the
               chance level a macro-F1 classifier must clear.
- persistence: the label known at t, i.e. the target of the row H minutes earlier (its price
               horizon ends at t); where that row has no target, the training majority class.
- logistic:    multinomial logistic regression with L2 on the last row's features (scaled with
               statistics of the training rows), class-balanced by default because the score
               is macro-F1. torch is imported inside the function.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .metrics import CLASS_NAMES, class_priors, classification_scores, per_class_precision_recall

__all__ = [
    "BaselineResult",
    "LogisticModel",
    "fit_logistic",
    "logistic_baseline",
    "majority_baseline",
    "persistence_baseline",
    "run_baselines",
    "stratified_baseline",
]


@dataclass
class BaselineResult:
    name: str
    macro_f1: float
    f1: dict[str, float]  # per class: SELL, NEUTRAL, BUY
    confusion: list[list[int]]
    n: int
    predictions: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0, np.int64))
    precision: dict[str, float] = field(default_factory=dict)  # per class; 0 for a class never predicted
    recall: dict[str, float] = field(default_factory=dict)  # per class; 0 for a class never true

    def to_dict(self) -> dict[str, Any]:
        """Flat numbers for logging: `{"macro_f1", "f1_SELL", ..., "precision_SELL", ...,
        "recall_SELL", ..., "n"}` (per class: SELL, NEUTRAL, BUY)."""
        out: dict[str, Any] = {"macro_f1": self.macro_f1}
        for score, per_class in (("f1", self.f1), ("precision", self.precision), ("recall", self.recall)):
            out.update({f"{score}_{name}": value for name, value in per_class.items()})
        out["n"] = self.n
        return out


def _result(name: str, y_true: np.ndarray, y_pred: np.ndarray) -> BaselineResult:
    scores = classification_scores(y_true, y_pred)
    precision, recall = per_class_precision_recall(np.asarray(scores["confusion"]))
    return BaselineResult(name, scores["macro_f1"], scores["f1"], scores["confusion"], scores["n"],
                          np.asarray(y_pred, dtype=np.int64),
                          precision=dict(zip(CLASS_NAMES, map(float, precision))),
                          recall=dict(zip(CLASS_NAMES, map(float, recall))))


def _labels(targets: np.ndarray, ends: np.ndarray) -> np.ndarray:
    y = np.asarray(targets)[np.asarray(ends, dtype=np.int64)].astype(np.int64)
    if (y < 0).any():
        raise ValueError("some window ends have no target")
    return y


def _majority_class(targets: np.ndarray, train_ends: np.ndarray) -> int:
    y = _labels(targets, train_ends)
    if not y.size:
        raise ValueError("no training ends")
    return int(np.bincount(y, minlength=3).argmax())


def majority_baseline(targets: np.ndarray, train_ends: np.ndarray, eval_ends: np.ndarray) -> BaselineResult:
    majority = _majority_class(targets, train_ends)
    y = _labels(targets, eval_ends)
    return _result("majority", y, np.full(y.size, majority, dtype=np.int64))


def stratified_baseline(
    targets: np.ndarray, train_ends: np.ndarray, eval_ends: np.ndarray, seed: int = 0
) -> BaselineResult:
    """Random classes at the training ends' priors, independent of everything else: the score of
    guessing with the right class balance (seeded: the same `seed` gives the same predictions)."""
    priors = class_priors(_labels(targets, train_ends))
    if not priors.sum():
        raise ValueError("no training ends")
    y = _labels(targets, eval_ends)
    prediction = np.random.default_rng(seed).choice(priors.size, size=y.size, p=priors)
    return _result("stratified", y, prediction.astype(np.int64))


def persistence_baseline(
    targets: np.ndarray,
    train_ends: np.ndarray,
    eval_ends: np.ndarray,
    lookahead: int,
    minutes: np.ndarray | None = None,
) -> BaselineResult:
    """Predicts target[t - H]: that label used prices up to t, so it is known at t."""
    targets = np.asarray(targets)
    eval_ends = np.asarray(eval_ends, dtype=np.int64)
    y = _labels(targets, eval_ends)
    fallback = _majority_class(targets, train_ends)
    if minutes is None:
        source = eval_ends - lookahead
        found = source >= 0
    else:
        minutes = np.asarray(minutes, dtype=np.int64)
        wanted = minutes[eval_ends] - lookahead
        source = np.searchsorted(minutes, wanted)
        found = source < minutes.size
        found[found] = minutes[source[found]] == wanted[found]
    prediction = np.full(y.size, fallback, dtype=np.int64)
    known = targets[source[found]].astype(np.int64)
    prediction[np.flatnonzero(found)[known >= 0]] = known[known >= 0]
    return _result("persistence", y, prediction)


@dataclass
class LogisticModel:
    """Weights of a fitted multinomial logistic regression and the scaler of its inputs."""

    weight: np.ndarray  # float32 [3, F]
    bias: np.ndarray  # float32 [3]
    scaler: Any

    def predict(self, features: np.ndarray, ends: np.ndarray, chunk_rows: int = 65_536) -> np.ndarray:
        ends = np.asarray(ends, dtype=np.int64)
        out = np.empty(ends.size, dtype=np.int64)
        for start in range(0, ends.size, chunk_rows):
            x = self.scaler.transform_rows(features, ends[start : start + chunk_rows])  # per instrument block
            out[start : start + chunk_rows] = (x @ self.weight.T + self.bias).argmax(axis=1)
        return out


def fit_logistic(
    features: np.ndarray,
    targets: np.ndarray,
    train_ends: np.ndarray,
    scaler: Any | None = None,
    l2: float = 1e-3,
    class_weight: str | None = "balanced",
    max_train_rows: int = 100_000,
    max_iter: int = 200,
) -> LogisticModel:
    """Multinomial logistic regression on the rows `train_ends`, full-batch L-BFGS from zero
    weights (deterministic). `scaler`: a fitted `dataset.Scaler`; by default one is fitted on the
    training rows. At most `max_train_rows` rows are used, evenly spaced in time (a year of rows at
    807 features would otherwise be a 1.2 GB copy)."""
    import torch

    from .dataset import Scaler

    train_ends = np.asarray(train_ends, dtype=np.int64)
    if train_ends.size > max_train_rows:
        train_ends = train_ends[np.linspace(0, train_ends.size - 1, max_train_rows).round().astype(np.int64)]
    if scaler is None:
        scaler = Scaler.fit(features, train_ends)
    y_train = _labels(targets, train_ends)
    x_train = torch.from_numpy(scaler.transform_rows(features, train_ends))
    if not torch.isfinite(x_train).all():
        raise ValueError("non-finite features at training ends: use only valid rows")

    weights = None
    if class_weight == "balanced":
        counts = np.bincount(y_train, minlength=3).astype(np.float64)
        w = np.where(counts > 0, y_train.size / (3 * np.maximum(counts, 1)), 0.0)
        weights = torch.tensor(w, dtype=torch.float32)
    elif class_weight is not None:
        raise ValueError(f"class_weight must be 'balanced' or None, got {class_weight!r}")

    weight = torch.zeros(3, x_train.shape[1], requires_grad=True)
    bias = torch.zeros(3, requires_grad=True)
    target = torch.from_numpy(y_train)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = loss_fn(x_train @ weight.T + bias, target) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return LogisticModel(weight.detach().numpy().copy(), bias.detach().numpy().copy(), scaler)


def logistic_baseline(
    features: np.ndarray,
    targets: np.ndarray,
    train_ends: np.ndarray,
    eval_ends: np.ndarray,
    scaler: Any | None = None,
    model: LogisticModel | None = None,
    **fit_options: Any,
) -> BaselineResult:
    """Scores of a logistic regression on each window's last row (fitted on `train_ends` unless
    a fitted `model` is given; `fit_options` go to `fit_logistic`)."""
    if model is None:
        model = fit_logistic(features, targets, train_ends, scaler=scaler, **fit_options)
    y = _labels(targets, eval_ends)
    return _result("logistic", y, model.predict(features, eval_ends))


def run_baselines(
    features: np.ndarray,
    targets: np.ndarray,
    split: Any,
    lookahead: int,
    minutes: np.ndarray | None = None,
    on: Sequence[str] = ("val",),
    scaler: Any | None = None,
    seed: int = 0,
) -> dict[str, dict[str, BaselineResult]]:
    """`{"majority": {"val": result}, "stratified": {...}, "persistence": {...}, "logistic": {...}}`
    for a `splits.Split`.

    Evaluated on `on`, any names of `split.parts()` (default validation only: pass
    `("val", "test")` once, at the very end). The stratified draws use `seed`.
    """
    parts = split.parts()
    unknown = [part for part in on if part not in parts]
    if unknown:
        raise ValueError(f"unknown split parts {unknown}: the split has {sorted(parts)}")
    results: dict[str, dict[str, BaselineResult]] = {
        "majority": {}, "stratified": {}, "persistence": {}, "logistic": {},
    }
    model = fit_logistic(features, targets, split.train, scaler=scaler) if on else None
    for part in on:
        ends = parts[part]
        results["majority"][part] = majority_baseline(targets, split.train, ends)
        results["stratified"][part] = stratified_baseline(targets, split.train, ends, seed=seed)
        results["persistence"][part] = persistence_baseline(targets, split.train, ends, lookahead, minutes)
        results["logistic"][part] = logistic_baseline(features, targets, split.train, ends, model=model)
    return results
