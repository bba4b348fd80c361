"""The `model` stage: the final model, scored once on the test split next to the baselines.

    final = train_final_model(load_settings())   # .pth bundle, test vs baselines, backtest, MLflow

Its settings: training.yaml, with `{DATA_DIR}/optimization/best_params.json` over them when the
file exists (`resolve_training`). Lines go to this package's loggers; torch and mlflow are
imported when the model trains.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..labelling import CLASS_NAMES
from ..plots import (
    confusion_figure,
    correlation_png,
    feature_histograms_png,
    fig_png,
    training_curve_figure,
)
from ..secrets import redact_url
from ..settings import LoopSettings
from .data import PreparedData, prepare_data
from .dataset import rows_covered
from .reports import num, pct

if TYPE_CHECKING:
    from ..settings import Settings, TrainingSettings

__all__ = ["FinalModel", "feature_pictures", "resolve_training", "train_final_model"]

log = logging.getLogger(__name__)
TRAINING_CONFIG = "training config"  # where the params come from when best_params.json is not used


def resolve_training(settings: Settings, use_best_params: bool = True) -> tuple[TrainingSettings, str]:
    """(training settings to train with, where their params came from): training.yaml, with
    `best_params.json` over it when it exists and fits (else a warning and training.yaml)."""
    training = settings.training
    path = settings.paths.best_params_path
    if not use_best_params or not path.exists():
        return training, TRAINING_CONFIG
    from .tune import load_best_params

    try:
        best = load_best_params(path)
        meta = json.loads(path.read_text())
        resolved = training.with_params(best)
    except (OSError, ValueError, KeyError) as exc:  # ConfigError included: a key that is no setting
        log.warning(f"Ignoring {path}: unreadable ({exc}); using the training config")
        return training, TRAINING_CONFIG
    expected = settings.optimization.study_for(settings.labelling.suffix)
    if isinstance(meta, dict) and meta.get("study_name") not in (None, expected):
        log.warning(f"{path} comes from study '{meta.get('study_name')}', the current labels are '{expected}'")
    log.info(f"Using best params from {path}: {json.dumps(best, sort_keys=True)}")
    return resolved, str(path)


def run_params(training: TrainingSettings) -> dict[str, Any]:
    """The loop's and the model's settings as plain values (bundle `extra`, MLflow params)."""
    loop = training.model_dump(mode="json", include=set(LoopSettings.model_fields))
    return {**loop, **training.model_params()}


@dataclass
class FinalModel:
    model_path: Path
    params: dict[str, Any]
    params_source: str
    history: list[Any]
    best_epoch: int
    best_val_f1_macro: float
    n_parameters: int
    device: str
    test: dict[str, Any]  # f1_macro, f1_weighted, f1_{sell,neutral,buy}, accuracy, confusion, n
    baselines: dict[str, dict[str, Any]]  # name -> {"f1_macro", "f1_weighted", per class, "confusion"}
    backtests: dict[str, dict[str, Any]]  # "model" and each baseline -> BacktestResult.summary()
    sizes: dict[str, int]
    days: list[dt.date]
    confusion_png: bytes
    curve_png: bytes
    features_png: bytes | None = None  # feature histograms, raw and scaled, on the training rows
    correlation_png: bytes | None = None  # the feature correlation matrix on the training rows
    mlflow_run_id: str | None = None
    mlflow_model_uri: str | None = None
    registered_version: str | None = None
    promoted: bool = False
    previous_champion: float | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _baseline_scores(result: Any) -> dict[str, Any]:
    f1 = result.f1
    cm = np.asarray(result.confusion)
    support = cm.sum(axis=1)
    values = np.array([f1["SELL"], f1["NEUTRAL"], f1["BUY"]])
    n = int(cm.sum())
    return {
        "f1_macro": float(result.macro_f1),
        "f1_weighted": float((values * support).sum() / n) if n else 0.0,
        "f1_sell": float(f1["SELL"]), "f1_neutral": float(f1["NEUTRAL"]), "f1_buy": float(f1["BUY"]),
        "confusion": cm.tolist(), "n": n,
    }


def _backtest(data: PreparedData, predictions: np.ndarray, fee: float) -> dict[str, Any]:
    """The test-period backtest of per-window predictions: the signal is NEUTRAL except at the
    test window ends; trades enter at t+1 and hold `lookahead` minutes."""
    from .backtest import backtest_signals

    if data.prices is None:
        raise ValueError("the backtest needs the label prices: prepare_data(..., with_prices=True)")
    ends = data.split.test
    first = int(ends[0])
    signals = np.ones(data.arrays.n_rows - first, dtype=np.int64)
    signals[ends - first] = predictions
    result = backtest_signals(signals, data.prices[first:], hold=data.lookahead, fee=fee,
                              minutes=data.minutes[first:])
    return result.summary()


def train_final_model(
    settings: Settings,
    start: dt.date | str | None = None,
    end: dt.date | str | None = None,
    use_best_params: bool = True,
    mlflow: bool = True,
    run_tags: Mapping[str, Any] | None = None,
) -> FinalModel:
    """Trains the final model (best_params.json when present, else training.yaml), checkpoints the
    one-file bundle `{DATA_DIR}/models/quantgod_cloud_model.pth` whenever val F1 macro improves,
    evaluates ONCE on the test split next to the majority / persistence / logistic baselines with a
    fee-aware backtest, and logs it all to MLflow (the model registered; alias `champion` moved
    when it beats the holder's test F1 macro)."""
    import torch

    from ..progress import Progress
    from .baselines import run_baselines
    from .models import build_model
    from .train import TrainConfig, evaluate, save_model, train_model

    started = time.perf_counter()
    lab = settings.labelling
    training, source = resolve_training(settings, use_best_params)
    params = run_params(training)
    arch = training.arch
    data = prepare_data(settings, start, end, training.n_levels, training.seq_len, with_prices=True)
    if not data.split.test.size:
        raise ValueError(f"the test split is empty ({data.describe()}): label more days")
    log.info(f"Final model: {arch} | labels {lab.suffix} | params from {source}"
             + (f" | profile {training.profile}" if training.profile else ""))
    log.info(data.describe())

    cfg = TrainConfig.from_settings(training)
    torch.manual_seed(cfg.seed)
    model = build_model(arch, data.n_features, training.model_params())
    label_settings = {
        "suffix": lab.suffix, "lookahead": lab.lookahead, "threshold_short": lab.threshold_short,
        "threshold_long": lab.threshold_long, "price_column": lab.price_column,
        "classes": list(CLASS_NAMES),
    }
    extra = {
        "params": params, "params_source": source, "n_levels": data.n_levels, "seq_len": data.seq_len,
        "days": [d.isoformat() for d in data.labelled.days], "split": data.sizes(), "purge_minutes": data.split.purge,
    }
    path = settings.paths.model_path
    # mid-training checkpoints go beside the model file: a run that dies leaves the last finished
    # model in place, not a half-trained one under its name
    checkpoint_path = path.with_name(f"{path.stem}.checkpoint{path.suffix}")

    def checkpoint(m: Any, metrics: Any) -> None:
        save_model(checkpoint_path, m, feature_names=data.arrays.feature_names, scaler_dict=data.scaler.to_dict(),
                   label_settings=label_settings, metrics={"best_val_f1_macro": metrics.f1_macro,
                                                           "best_epoch": metrics.epoch}, extra=extra)

    with Progress(cfg.epochs, "training") as progress:  # a bar in a terminal, plain lines in logs
        result = train_model(model, data.dataset("train"), data.dataset("val"), cfg,
                             on_epoch=lambda m: progress.update(note=f"val F1 macro {m.f1_macro:.4f}"),
                             checkpoint_fn=checkpoint)

    # the test split, once
    device = next(model.parameters()).device
    scores = evaluate(model, data.dataset("test"), device, batch_size=cfg.eval_batch_size or 2 * cfg.batch_size,
                      amp=cfg.amp)
    test = {k: scores[k] for k in ("f1_macro", "f1_weighted", "f1_sell", "f1_neutral", "f1_buy", "accuracy", "n")}
    test["confusion"] = scores["confusion"]
    baseline_results = run_baselines(data.features, data.targets, data.split, data.lookahead, data.minutes,
                                     on=("test",), scaler=data.scaler)
    baselines = {name: _baseline_scores(parts["test"]) for name, parts in baseline_results.items()}
    fee = training.backtest.fee
    backtests = {"model": _backtest(data, scores["y_pred"], fee)}
    for name, parts in baseline_results.items():
        backtests[name] = _backtest(data, parts["test"].predictions, fee)

    s, n, b = test["f1_sell"], test["f1_neutral"], test["f1_buy"]
    log.info(f"Test ({test['n']:,} windows) | F1 Macro: {test['f1_macro']:.4f} | "
             f"F1 Weighted: {test['f1_weighted']:.4f} | F1 [S/N/B]: [{s:.3f}/{n:.3f}/{b:.3f}] | "
             f"Accuracy: {test['accuracy']:.4f}")
    for name, base in baselines.items():
        log.info(f"Baseline {name:<11} | F1 Macro: {base['f1_macro']:.4f} | F1 [S/N/B]: "
                 f"[{base['f1_sell']:.3f}/{base['f1_neutral']:.3f}/{base['f1_buy']:.3f}]")
    bt = backtests["model"]
    log.info(f"Backtest (fee {100 * fee:.3f} %/side, hold {data.lookahead} min) | trades {bt['n_trades']} | "
             f"net {pct(bt['net_return'])} | hit rate {pct(bt['hit_rate'])} | Sharpe {num(bt['sharpe'])}")
    log.info(f"Confusion matrix (rows true S/N/B, cols predicted): {test['confusion']}")

    # the final bundle: best weights + test scores
    save_model(path, model, feature_names=data.arrays.feature_names, scaler_dict=data.scaler.to_dict(),
               label_settings=label_settings,
               metrics={"best_val_f1_macro": result.best_f1_macro, "best_epoch": result.best_epoch,
                        **{f"test_{k}": v for k, v in test.items()}},
               extra={**extra, "baselines_test_f1_macro": {k: v["f1_macro"] for k, v in baselines.items()},
                      "backtest": bt})
    checkpoint_path.unlink(missing_ok=True)
    log.info(f"Model saved: {path}")

    features_png, correlation_png_ = feature_pictures(data)
    final = FinalModel(
        model_path=path, params=params, params_source=source, history=result.history,
        best_epoch=result.best_epoch, best_val_f1_macro=result.best_f1_macro,
        n_parameters=result.n_parameters, device=result.device, test=test, baselines=baselines,
        backtests=backtests, sizes=data.sizes(), days=list(data.labelled.days),
        confusion_png=fig_png(confusion_figure(test["confusion"], title=f"Test confusion matrix ({arch})")),
        curve_png=fig_png(training_curve_figure(result.history, title=f"{arch}: training curve")),
        features_png=features_png, correlation_png=correlation_png_,
    )

    if mlflow:
        from .tracking import log_final_run

        log_final_run(settings, final, model, data, run_tags)
        store = training.mlflow
        log.info(f"MLflow run {final.mlflow_run_id} ({redact_url(store.tracking_uri)}, experiment '{store.experiment}')"
                 + (f" | registered '{store.registered_model}' v{final.registered_version}"
                    if final.registered_version else "")
                 + (" | now champion" if final.promoted else " | champion unchanged"
                    + (f" (holds test F1 macro {final.previous_champion:.4f})"
                       if final.previous_champion is not None else "")))
    final.seconds = time.perf_counter() - started
    return final


def feature_pictures(data: PreparedData) -> tuple[bytes | None, bytes | None]:
    """(feature histograms raw and scaled with the model's scaler, correlation matrix), both over
    the training rows; (None, None) with a warning when they cannot be drawn."""
    try:
        rows = rows_covered(data.split.train, data.seq_len, data.arrays.n_rows)
        names = data.arrays.feature_names
        hist = feature_histograms_png(data.features, names, data.scaler, rows=rows,
                                      title="Training rows: features raw and scaled (the model's scaler)")
        corr = correlation_png(data.features, names, rows=rows, title="Training rows: feature correlation")
        return hist.png, corr.png
    except Exception as exc:  # a picture is never worth failing the model
        log.warning(f"feature pictures skipped: {type(exc).__name__}: {exc}")
        return None, None
