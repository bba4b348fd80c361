"""How the `model` stage judges a model: walk-forward validation (chooses), the test block (reports).

- `walk_forward(...)`: the model's params trained on every walk-forward fold but the last (the
  final training is the last fold), each fold's validation block scored for the model and the
  baselines. Promotion reads only these scores: a model is promotable when its mean beats both
  persistence's and logistic's (`WalkForwardReport.promotable`).
- `test_report(...)`: the test block, scored once for the chosen model and every baseline, with
  moving-block bootstrap intervals (block = the label horizon: neighbouring windows share almost
  all of their label minutes) for the model's macro-F1 and for model − each baseline, and the
  one-line verdicts (`edge over persistence: +0.052 [-0.081, +0.190]: not significant`).

The headline test metric is macro-F1; the walk-forward comparison uses optimization.yaml `metric`
(macro-F1 when that is `loss`, which the baselines do not have). torch is imported by the
training helpers this module calls, not here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..labelling import CLASS_NAMES
from .metrics import CONFUSION_METRICS, class_priors, confusion_matrix, metric_from_confusion

if TYPE_CHECKING:
    from ..settings import EvaluationSettings, Settings
    from .data import PreparedData

__all__ = [
    "MUST_BEAT",
    "FoldScore",
    "TestReport",
    "WalkForwardReport",
    "comparison_metric",
    "instrument_reports",
    "split_priors",
    "test_report",
    "unseen_reports",
    "walk_forward",
]

log = logging.getLogger(__name__)

MUST_BEAT = ("persistence", "logistic")  # a model that does not beat both on walk-forward is never promoted
HEADLINE = "f1_macro"


def comparison_metric(metric: str) -> str:
    """The metric model and baselines are compared on: `metric`, or macro-F1 for `loss`."""
    return metric if metric in CONFUSION_METRICS else HEADLINE


def _score(metric: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return metric_from_confusion(metric, confusion_matrix(y_true, y_pred))


# ---------------------------------------------------------------------------------------------
# Walk-forward validation


@dataclass
class FoldScore:
    fold: int  # 1-based
    train_windows: int
    val_windows: int
    val_period: tuple[str, str]  # first and last validation window end (UTC, minutes)
    model: float
    baselines: dict[str, float]
    best_epoch: int = 0


@dataclass
class WalkForwardReport:
    metric: str  # what the scores are
    folds: list[FoldScore]

    @property
    def model_mean(self) -> float:
        return float(np.mean([f.model for f in self.folds]))

    def baseline_mean(self, name: str) -> float:
        return float(np.mean([f.baselines[name] for f in self.folds]))

    @property
    def baseline_means(self) -> dict[str, float]:
        return {name: self.baseline_mean(name) for name in self.folds[0].baselines}

    @property
    def promotable(self) -> bool:
        """The model's mean walk-forward score beats persistence's and logistic's."""
        return all(self.model_mean > self.baseline_mean(name) for name in MUST_BEAT)

    def why_not(self) -> str | None:
        """Which of MUST_BEAT the model fails to beat, in words (None when promotable)."""
        failed = [f"{name} {self.baseline_mean(name):.4f}" for name in MUST_BEAT
                  if not self.model_mean > self.baseline_mean(name)]
        if not failed:
            return None
        return (f"walk-forward {self.metric} {self.model_mean:.4f} does not beat " + " / ".join(failed))

    def summary(self) -> dict[str, Any]:
        return {
            "metric": self.metric, "model_mean": self.model_mean, "baseline_means": self.baseline_means,
            "promotable": self.promotable,
            "folds": [{"fold": f.fold, "train_windows": f.train_windows, "val_windows": f.val_windows,
                       "val_first": f.val_period[0], "val_last": f.val_period[1], "model": f.model,
                       "best_epoch": f.best_epoch, **{f"baseline_{k}": v for k, v in f.baselines.items()}}
                      for f in self.folds],
        }


def _period_text(data: PreparedData, ends: np.ndarray) -> tuple[str, str]:
    period = data.period(ends)
    if period is None:
        return ("", "")
    return (period[0].strftime("%Y-%m-%d %H:%M"), period[1].strftime("%Y-%m-%d %H:%M"))


def fold_baselines(data: PreparedData, k: int, metric: str) -> dict[str, float]:
    """The baselines' scores on fold k's validation block (fitted on its training ends)."""
    from .baselines import run_baselines

    fold = data.folds[k]
    results = run_baselines(data.features, data.targets, fold, data.lookahead, data.keyed_minutes, on=("val",),
                            scaler=data.fold_scaler(k))
    return {name: metric_from_confusion(metric, np.asarray(parts["val"].confusion))
            for name, parts in results.items()}


def walk_forward(
    data: PreparedData,
    metric: str,
    train_fold: Callable[[int], tuple[np.ndarray, np.ndarray, int]],
    last_fold_predictions: tuple[np.ndarray, np.ndarray, int],
) -> WalkForwardReport:
    """Scores of the model and the baselines on every fold's validation block.

    `train_fold(k)` trains the model's params on fold k and returns (y_true, y_pred, best_epoch)
    of its validation block; it is called for every fold but the last, whose (y_true, y_pred,
    best_epoch) is `last_fold_predictions` (the final model's own early-stopping block)."""
    metric = comparison_metric(metric)
    scores = []
    n = len(data.folds)
    for k, fold in enumerate(data.folds):
        y_true, y_pred, best_epoch = train_fold(k) if k < n - 1 else last_fold_predictions
        score = FoldScore(k + 1, int(fold.train.size), int(fold.val.size), _period_text(data, fold.val),
                          _score(metric, y_true, y_pred), fold_baselines(data, k, metric), best_epoch)
        shown = " | ".join(f"{name} {v:.4f}" for name, v in score.baselines.items())
        log.info(f"Walk-forward fold {k + 1}/{n} (train {score.train_windows:,} / val {score.val_windows:,} windows, "
                 f"val {score.val_period[0]}..{score.val_period[1]}) | model {metric} {score.model:.4f} | {shown}")
        scores.append(score)
    report = WalkForwardReport(metric, scores)
    means = " | ".join(f"{name} {v:.4f}" for name, v in report.baseline_means.items())
    log.info(f"Walk-forward mean {metric}: model {report.model_mean:.4f} | {means} | "
             + ("promotable (beats persistence and logistic)" if report.promotable else f"not promotable: "
                f"{report.why_not()}"))
    return report


# ---------------------------------------------------------------------------------------------
# The test block


@dataclass
class TestReport:
    """The test block, scored once. Intervals are `uncertainty.Interval`s."""

    __test__ = False  # not a pytest class, despite the name

    model: dict[str, Any]  # classification summary of the chosen model (f1_*, precision_*, recall_*, …)
    interval: Any  # its macro-F1, with the bootstrap interval
    baselines: dict[str, dict[str, Any]]  # name -> classification summary
    edges: dict[str, Any]  # name -> interval of model − baseline macro-F1
    verdicts: dict[str, str]  # name -> one line
    block: int  # bootstrap block (windows)
    seeds: dict[str, tuple[float, float]] = field(default_factory=dict)  # metric -> (mean, std) over seeds
    # several training instruments: the same scores on each one's test windows (training instrument key ->)
    instruments: dict[str, TestReport] = field(default_factory=dict)
    # instruments never trained on, scored over the same test period (never used to choose anything)
    unseen: dict[str, TestReport] = field(default_factory=dict)

    def instrument_metrics(self) -> dict[str, float]:
        """Flat numbers of the per-instrument and unseen reports: `f1_macro_{key}` (with `_low` /
        `_high` and `n_windows`), `baseline_{name}_f1_macro_{key}`, and `unseen_{key}_f1_macro`,
        `unseen_{key}_baseline_{name}_f1_macro`, `unseen_{key}_edge_{name}` ... ."""
        out: dict[str, float] = {}
        for key, r in self.instruments.items():
            out.update({f"f1_macro_{key}": r.interval.estimate, f"f1_macro_low_{key}": r.interval.low,
                        f"f1_macro_high_{key}": r.interval.high, f"n_windows_{key}": float(r.model["n"])})
            for name, base in r.baselines.items():
                out[f"baseline_{name}_f1_macro_{key}"] = base["f1_macro"]
        for key, r in self.unseen.items():
            out.update({f"unseen_{key}_f1_macro": r.interval.estimate, f"unseen_{key}_f1_macro_low": r.interval.low,
                        f"unseen_{key}_f1_macro_high": r.interval.high, f"unseen_{key}_n_windows": float(r.model["n"])})
            for name, base in r.baselines.items():
                out[f"unseen_{key}_baseline_{name}_f1_macro"] = base["f1_macro"]
            for name, edge in r.edges.items():
                out.update({f"unseen_{key}_edge_{name}": edge.estimate, f"unseen_{key}_edge_{name}_low": edge.low,
                            f"unseen_{key}_edge_{name}_high": edge.high})
        return out

    @property
    def edge(self) -> bool:
        """The model beats persistence and logistic on the test block with intervals above zero."""
        from .uncertainty import is_edge

        present = [name for name in MUST_BEAT if name in self.edges]
        return bool(present) and all(is_edge(self.edges[name]) for name in present)

    @property
    def verdict(self) -> str:
        """`edge: <the MUST_BEAT lines>` or `no edge: <the first of them whose interval is not above zero>`."""
        from .uncertainty import is_edge

        lines = [self.verdicts[name] for name in MUST_BEAT if name in self.verdicts]
        if self.edge:
            return "edge: " + "; ".join(lines)
        failing = [self.verdicts[name] for name in MUST_BEAT if name in self.edges and not is_edge(self.edges[name])]
        return "no edge: " + (failing or lines or ["no baseline to compare"])[0]


def summarise(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """f1_macro, f1_weighted, accuracy, balanced_accuracy, per-class F1 / precision / recall, confusion, n."""
    from .train import classification_summary

    return classification_summary(np.asarray(y_true), np.asarray(y_pred))


def test_report(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    baseline_predictions: Mapping[str, np.ndarray],
    evaluation: EvaluationSettings,
    block: int,
) -> TestReport:
    """The chosen model's and the baselines' test scores, the model's macro-F1 interval, and
    model − baseline intervals (paired: the same resampled windows) with their verdicts."""
    from .uncertainty import difference_interval, metric_interval, verdict

    options: dict[str, Any] = {"block": block, "resamples": evaluation.resamples,
                               "confidence": evaluation.confidence, "seed": evaluation.seed}
    interval = metric_interval(y_true, y_pred, HEADLINE, **options)
    baselines, edges, verdicts = {}, {}, {}
    for name, predictions in baseline_predictions.items():
        baselines[name] = summarise(y_true, predictions)
        edges[name] = difference_interval(y_true, y_pred, predictions, HEADLINE, **options)
        verdicts[name] = verdict(f"edge over {name}", edges[name])
    return TestReport(summarise(y_true, y_pred), interval, baselines, edges, verdicts, block)


def instrument_reports(
    data: PreparedData,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    baseline_predictions: Mapping[str, np.ndarray],
    evaluation: EvaluationSettings,
    block: int,
) -> dict[str, TestReport]:
    """`test_report` on each training instrument's test windows (`y_true`, `y_pred` and the
    baselines' predictions are over `data.split.test`, in its order); empty for one instrument."""
    if data.n_instruments < 2:
        return {}
    which = data.instrument_of(data.split.test)
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    out = {}
    for b, key in enumerate(data.instrument_keys):
        on = which == b
        if not on.any():
            log.warning(f"Test: {key} has no test window")
            continue
        out[key] = report = test_report(y_true[on], y_pred[on],
                                        {name: np.asarray(p)[on] for name, p in baseline_predictions.items()},
                                        evaluation, block)
        shown = " | ".join(f"{name} {base['f1_macro']:.4f}" for name, base in report.baselines.items())
        log.info(f"Test {key} ({int(on.sum()):,} windows) | F1 Macro: {report.interval.format()} | {shown}")
    return out


def unseen_reports(
    settings: Settings,
    data: PreparedData,
    score: Callable[[Any], Mapping[str, Any]],
    evaluation: EvaluationSettings,
    block: int,
    seed: int = 0,
) -> dict[str, TestReport]:
    """The unseen-instrument test: each of training.yaml `unseen_instruments`, never trained on,
    prepared over the same days and calendar cut (`data.unseen_data`, scaled with its own
    development rows) and scored by `score(dataset)` (the final model: `y_true`, `y_pred`) next to
    persistence (its own labels known at t), majority and stratified at the TRAINING priors, and
    logistic fitted on the training instruments. Reported only: it chooses nothing."""
    from .baselines import LogisticModel, fit_logistic, persistence_baseline
    from .data import unseen_data

    out: dict[str, TestReport] = {}
    if not settings.unseen_instruments:
        return out
    train_y = data.targets[data.split.train].astype(np.int64)
    priors = class_priors(train_y)
    majority = int(np.bincount(train_y, minlength=3).argmax())
    logistic = fit_logistic(data.features, data.targets, data.split.train, scaler=data.scaler)
    for instrument in settings.unseen_instruments:
        try:
            unseen = unseen_data(settings, data, instrument)
        except (OSError, ValueError) as exc:  # missing days, no window: the trained model still stands
            log.warning(f"Unseen instrument {instrument.key} not scored: {exc}")
            continue
        scores = score(unseen.dataset())
        y_true, y_pred = np.asarray(scores["y_true"]), np.asarray(scores["y_pred"])
        n = unseen.test.size
        baselines = {
            "majority": np.full(n, majority, dtype=np.int64),
            "stratified": np.random.default_rng(seed).choice(priors.size, size=n, p=priors).astype(np.int64),
            "persistence": persistence_baseline(unseen.targets, unseen.development, unseen.test, unseen.lookahead,
                                                unseen.minutes).predictions,
            # the training instruments' logistic regression on this instrument's own scaling
            "logistic": LogisticModel(logistic.weight, logistic.bias, unseen.scaler).predict(unseen.features,
                                                                                             unseen.test),
        }
        out[unseen.key] = report = test_report(y_true, y_pred, baselines, evaluation, block)
        shown = " | ".join(f"{name} {base['f1_macro']:.4f}" for name, base in report.baselines.items())
        log.info(f"Unseen instrument {unseen.key} ({n:,} test windows, its own development-period scaling) | "
                 f"F1 Macro: {report.interval.format()} | {shown}")
    return out


def seed_spread(per_seed: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """metric -> (mean, std over the seeds) of every numeric test score."""
    keys = [k for k, v in per_seed[0].items() if isinstance(v, (int, float)) and k != "n"]
    out = {}
    for key in keys:
        values = np.array([float(s[key]) for s in per_seed])
        out[key] = (float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0)
    return out


def split_priors(data: PreparedData) -> dict[str, list[float]]:
    """The class priors (SELL, NEUTRAL, BUY) of the windows of every part: each fold's training
    and validation ends, the final split's, the test block's."""
    out = {}
    for k, fold in enumerate(data.folds):
        out[f"fold_{k + 1}_train"] = class_priors(data.targets[fold.train]).round(4).tolist()
        out[f"fold_{k + 1}_val"] = class_priors(data.targets[fold.val]).round(4).tolist()
    out["test"] = class_priors(data.targets[data.split.test]).round(4).tolist()
    return out


def priors_line(priors: Mapping[str, list[float]]) -> str:
    """`Class priors S/N/B | train 0.31/0.55/0.15 | …` for the final split's parts and the test block."""
    folds = [int(k.split("_")[1]) for k in priors if k.startswith("fold_")]
    shown = {}
    if folds:
        n = max(folds)
        shown = {"train": priors[f"fold_{n}_train"], "val": priors[f"fold_{n}_val"]}
    shown["test"] = priors["test"]
    parts = " | ".join(f"{name} " + "/".join(f"{p:.2f}" for p in values) for name, values in shown.items())
    return f"Class priors {'/'.join(c[0] for c in CLASS_NAMES)} | {parts}"

