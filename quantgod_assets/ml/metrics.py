"""Classification scores for the three label classes, in numpy (no sklearn)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..labelling import CLASS_NAMES

__all__ = [
    "CLASS_NAMES",
    "class_priors",
    "classification_scores",
    "confusion_matrix",
    "macro_f1",
    "metric_from_confusion",
    "per_class_f1",
    "per_class_precision_recall",
]

# the scores `metric_from_confusion` computes (settings.METRIC_DIRECTIONS adds "loss", which needs logits)
CONFUSION_METRICS = ("f1_macro", "f1_weighted", "accuracy", "balanced_accuracy")


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = 3) -> np.ndarray:
    """int64 [n_classes, n_classes]: rows are the true class, columns the predicted one."""
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {y_true.size} vs {y_pred.size}")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= n_classes):
            raise ValueError(f"{name} holds values outside 0..{n_classes - 1}")
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes
    )


def per_class_f1(confusion: np.ndarray) -> np.ndarray:
    """F1 of each class; 0 for a class neither present nor predicted (sklearn's zero_division=0)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion)
    denominator = confusion.sum(axis=0) + confusion.sum(axis=1)  # predicted + true = 2tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denominator > 0, 2 * tp / denominator, 0.0)
    return f1


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = 3) -> float:
    """The unweighted mean of the per-class F1 over all `n_classes` classes."""
    return float(per_class_f1(confusion_matrix(y_true, y_pred, n_classes)).mean())


def classification_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """`{"macro_f1", "f1": {class: f1}, "confusion": [[...]], "support": {class: n}, "n"}`."""
    confusion = confusion_matrix(y_true, y_pred, len(CLASS_NAMES))
    f1 = per_class_f1(confusion)
    return {
        "macro_f1": float(f1.mean()),
        "f1": {name: float(v) for name, v in zip(CLASS_NAMES, f1)},
        "confusion": confusion.tolist(),
        "support": {name: int(v) for name, v in zip(CLASS_NAMES, confusion.sum(axis=1))},
        "n": int(confusion.sum()),
    }


def per_class_precision_recall(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(precision, recall) of each class; 0 where a class is never predicted / never true."""
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion)
    predicted, true = confusion.sum(axis=0), confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(true > 0, tp / true, 0.0)
    return precision, recall


def metric_from_confusion(name: str, confusion: np.ndarray) -> float:
    """One of CONFUSION_METRICS from a confusion matrix (rows true, columns predicted)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    n = confusion.sum()
    if name == "f1_macro":
        return float(per_class_f1(confusion).mean())
    if name == "f1_weighted":
        return float((per_class_f1(confusion) * confusion.sum(axis=1)).sum() / n) if n else 0.0
    if name == "accuracy":
        return float(np.trace(confusion) / n) if n else 0.0
    if name == "balanced_accuracy":
        return float(per_class_precision_recall(confusion)[1].mean())
    raise ValueError(f"unknown metric {name!r}: one of {CONFUSION_METRICS}")


def class_priors(y: np.ndarray, n_classes: int = 3) -> np.ndarray:
    """The share of each class in `y` (zeros for an empty `y`)."""
    counts = np.bincount(np.asarray(y, dtype=np.int64).ravel(), minlength=n_classes).astype(np.float64)
    return counts / counts.sum() if counts.sum() else counts
