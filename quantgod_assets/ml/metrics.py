"""Classification scores for the three label classes, in numpy (no sklearn)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..labelling import CLASS_NAMES

__all__ = ["CLASS_NAMES", "classification_scores", "confusion_matrix", "macro_f1", "per_class_f1"]

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
