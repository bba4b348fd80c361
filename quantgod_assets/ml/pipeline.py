"""The ML stages as plain functions over the settings: data → Optuna study → final model.

What the `optimization` and `model` assets call (and what a script or notebook can call the same
way, without Dagster):

    settings = load_settings()
    data = prepare_data(settings, n_levels=10, seq_len=30)        # features, targets, split, scaler
    study = run_optimization(settings, log=logger)                # best_params.json, study, MLflow
    final = train_final_model(settings, log=logger)               # .pth, test vs baselines, MLflow

The labelled days come from `{DATA_DIR}/L2/labelled/{suffix}/`, the range from training.yaml
`data.start` / `data.end` (null: the first / last labelled day present); a gap in the range fails
with `MissingDaysError` naming the missing days. Heavy imports (torch, optuna, mlflow) happen
inside the functions.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..plots import fig_png as _png, training_curve_figure  # noqa: F401 - training_curve_figure: importable from here
from .dataset import (
    LabelledRange,
    MissingDaysError,  # noqa: F401 - raised by labelled_range; importable from here
    Scaler,
    TrainingArrays,
    WindowIndex,
    build_training_arrays,
    load_labelled_range,
    rows_covered,
)
from .splits import Split, train_val_test_split

__all__ = [
    "FinalModel",
    "MissingDaysError",
    "NoLabelledDaysError",
    "OptimizationOutcome",
    "PreparedData",
    "labelled_range",
    "prepare_data",
    "resolve_params",
    "run_optimization",
    "train_final_model",
]

LogLike = logging.Logger | Callable[[str], Any] | None
CLASS_NAMES = ("SELL", "NEUTRAL", "BUY")


class NoLabelledDaysError(FileNotFoundError):
    """The labelled folder of the current label suffix holds no day at all."""


def _say(log: LogLike) -> Callable[[str], Any]:
    from .train import as_log

    return as_log(log)


def _warn(log: LogLike) -> Callable[[str], Any]:
    if isinstance(log, logging.Logger) or hasattr(log, "warning"):
        return log.warning  # type: ignore[union-attr]
    return _say(log)


# ---------------------------------------------------------------------------------------------
# Data


def _label_dir(settings: Any) -> Path:
    return settings.paths.labelled_suffix_dir(settings.labelling.suffix)


def labelled_range(settings: Any, start: dt.date | str | None = None, end: dt.date | str | None = None,
                   require_complete: bool = True) -> LabelledRange:
    """The labelled days of [start, end] (default: training.yaml `data`, null = the first / last
    labelled day present). Raises `MissingDaysError` naming the days without a file."""
    label_dir = _label_dir(settings)
    start = start or settings.training.data_start
    end = end or settings.training.data_end
    if start is None or end is None:
        present = sorted(p.stem for p in label_dir.glob("????-??-??.parquet")) if label_dir.is_dir() else []
        if not present:
            raise NoLabelledDaysError(
                f"no labelled days in {label_dir} (label suffix {settings.labelling.suffix}): "
                "materialize labelled_frame first"
            )
        start = start or present[0]
        end = end or present[-1]
    found = load_labelled_range(label_dir, start, end)
    if require_complete:
        found.raise_if_missing()
    return found


@dataclass
class PreparedData:
    """Everything a model needs from the labelled range, for one (n_levels, seq_len)."""

    arrays: TrainingArrays
    windows: WindowIndex
    split: Split
    scaler: Scaler  # fitted on the rows inside training windows only
    seq_len: int
    n_levels: int
    lookahead: int
    labelled: LabelledRange
    prices: np.ndarray | None = None  # the label price column per row (for the backtest)

    @property
    def features(self) -> np.ndarray:
        return self.arrays.features

    @property
    def targets(self) -> np.ndarray:
        return self.arrays.targets

    @property
    def minutes(self) -> np.ndarray:
        return self.arrays.minutes

    @property
    def n_features(self) -> int:
        return int(self.arrays.features.shape[1])

    def dataset(self, part: str) -> Any:
        """A `SequenceDataset` over the shared matrix for "train", "val" or "test" (scaled per batch)."""
        from .dataset import SequenceDataset

        return SequenceDataset(self.features, self.targets, self.split.parts()[part], self.seq_len, self.scaler)

    def sizes(self) -> dict[str, int]:
        return {part: int(ends.size) for part, ends in self.split.parts().items()}

    def describe(self) -> str:
        s = self.sizes()
        days = self.labelled.days
        return (f"Data: {len(days)} labelled day(s) {days[0]}..{days[-1]} | {self.arrays.n_rows:,} rows | "
                f"{self.n_features} features ({self.n_levels} levels) | seq_len {self.seq_len} | "
                f"windows train {s['train']:,} / val {s['val']:,} / test {s['test']:,} "
                f"(purge {self.split.purge} min)")


def _read_prices(labelled: LabelledRange, column: str, n_rows: int) -> np.ndarray:
    parts = [frame.get_column(column).cast(float).to_numpy() for _day, frame in labelled.iter_days([column])]
    prices = np.concatenate(parts) if parts else np.zeros(0)
    if prices.size != n_rows:
        raise ValueError(f"read {prices.size} prices for {n_rows} rows")
    return prices


def prepare_data(
    settings: Any,
    start: dt.date | str | None = None,
    end: dt.date | str | None = None,
    n_levels: int | None = None,
    seq_len: int | None = None,
    *,
    arrays: TrainingArrays | None = None,
    labelled: LabelledRange | None = None,
    with_prices: bool = False,
) -> PreparedData:
    """Labelled days → float32 feature matrix → usable windows → purged train / val / test split →
    a scaler fitted on the training rows. `arrays` reuses a matrix already built for `n_levels`."""
    n_levels = int(n_levels or settings.training.n_levels)
    seq_len = int(seq_len or settings.training.seq_len)
    lookahead = int(settings.labelling.lookahead)
    if labelled is None:
        labelled = labelled_range(settings, start, end)
    if arrays is None:
        arrays = build_training_arrays(labelled, n_levels)
    elif arrays.n_levels != n_levels:
        raise ValueError(f"arrays hold {arrays.n_levels} levels, {n_levels} asked for")
    windows = WindowIndex.build(arrays.valid, arrays.targets, seq_len, arrays.minutes)
    split = train_val_test_split(windows.ends, lookahead, seq_len, tuple(settings.training.split), arrays.minutes)
    if not split.train.size or not split.val.size:
        raise ValueError(
            f"too few usable windows for a split: {len(windows)} windows of {seq_len} minutes over "
            f"{len(labelled.days)} day(s) give train {split.train.size} / val {split.val.size} / test "
            f"{split.test.size} (purge {split.purge} min): label more days or shorten seq_len"
        )
    scaler = Scaler.fit(arrays.features, rows_covered(split.train, seq_len, arrays.n_rows), arrays.feature_names)
    prices = _read_prices(labelled, settings.labelling.price_column, arrays.n_rows) if with_prices else None
    return PreparedData(arrays, windows, split, scaler, seq_len, n_levels, lookahead, labelled, prices)


# ---------------------------------------------------------------------------------------------
# Optuna


@dataclass
class OptimizationOutcome:
    study_name: str
    storage: str
    best_params: dict[str, Any]
    best_value: float
    best_trial: int
    n_complete: int
    n_pruned: int
    n_failed: int
    best_params_path: Path
    trials: list[dict[str, Any]]  # number, state, value, params, per-epoch values
    days: list[dt.date]
    mlflow_parent_run_id: str | None = None
    seconds: float = 0.0

    def trials_markdown(self, limit: int = 50) -> str:
        rows = ["| trial | state | F1 macro | params |", "|---:|---|---:|---|"]
        for t in self.trials[-limit:]:
            value = f"{t['value']:.4f}" if t["value"] is not None else "–"
            params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["params"].items())
            mark = " ⭐" if t["number"] == self.best_trial else ""
            rows.append(f"| {t['number']}{mark} | {t['state']} | {value} | {params} |")
        return "\n".join(rows)


def _train_defaults(settings: Any, max_batches: int | None) -> dict[str, Any]:
    """What a trial trains with besides the searched values: the training loop's settings and the
    training.yaml model parameters (a space that does not search `tcn_channels` uses the file's)."""
    defaults = {**settings.training.model_params(), **settings.training.loop_config()}
    defaults["max_batches_per_epoch"] = max_batches
    return defaults


def _trial_rows(study: Any) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({
            "number": t.number,
            "state": t.state.name,
            "value": float(t.value) if t.value is not None and math.isfinite(t.value) else None,
            "params": dict(t.params),
            "epochs": {int(k): float(v) for k, v in t.intermediate_values.items()},
        })
    return rows


def _mlflow_parent(tracking_uri: str, experiment: str, study_name: str) -> str | None:
    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            return None
        runs = client.search_runs([found.experiment_id], max_results=1,
                                  filter_string=f"tags.optuna_study = '{study_name}' and tags.run_kind = 'study'")
        return runs[0].info.run_id if runs else None
    except Exception:  # noqa: BLE001 - a link in the metadata, not worth failing for
        return None


def run_optimization(
    settings: Any,
    log: LogLike = None,
    start: dt.date | str | None = None,
    end: dt.date | str | None = None,
    mlflow: bool = True,
) -> OptimizationOutcome:
    """Runs (or resumes) the study named after the label suffix on the labelled range, writes
    `{DATA_DIR}/optimization/best_params.json`, logs parent + nested runs to MLflow."""
    import optuna

    from .tune import run_study

    say = _say(log)
    opt = settings.optimization
    started = time.perf_counter()
    labelled = labelled_range(settings, start, end)
    study_name = opt.study_for(settings.labelling.suffix)
    say(f"Optimization: study '{study_name}' at {opt.storage} | labels {settings.labelling.suffix} | "
        f"days {labelled.start}..{labelled.end} ({len(labelled.days)}) | "
        f"{opt.n_trials} trials x {opt.epochs_per_trial} epochs" + (f" | profile {opt.profile}" if opt.profile else ""))

    cache: dict[int, TrainingArrays] = {}

    def make_datasets(params: dict[str, Any]) -> tuple[Any, Any, int]:
        n_levels = int(params.get("n_levels", settings.training.n_levels))
        seq_len = int(params.get("seq_len", settings.training.seq_len))
        if n_levels not in cache:
            cache[n_levels] = build_training_arrays(labelled, n_levels)
        data = prepare_data(settings, n_levels=n_levels, seq_len=seq_len, arrays=cache[n_levels], labelled=labelled)
        say(data.describe())
        return data.dataset("train"), data.dataset("val"), data.n_features

    path = settings.paths.best_params_path
    tracking_uri = settings.training.mlflow_tracking_uri if mlflow else None
    best = run_study(
        make_datasets,
        opt.search_space,
        n_trials=opt.n_trials,
        storage_url=opt.storage,
        study_name=study_name,
        seed=opt.seed,
        n_startup_trials=opt.pruner_startup_trials,
        n_warmup_steps=opt.pruner_warmup_steps,
        epochs=opt.epochs_per_trial,
        log=log,
        mlflow_tracking_uri=tracking_uri,
        best_params_path=path,
        train_defaults=_train_defaults(settings, opt.max_batches_per_epoch),
        mlflow_experiment=opt.mlflow_experiment,
        timeout=opt.timeout_s,
        sampler_startup_trials=opt.sampler_startup_trials,
    )
    from .tune import make_study

    study = make_study(opt.storage, study_name, opt.seed, opt.pruner_startup_trials, opt.pruner_warmup_steps,
                       opt.sampler_startup_trials)
    trials = _trial_rows(study)
    states = [t["state"] for t in trials]
    outcome = OptimizationOutcome(
        study_name=study_name,
        storage=opt.storage,
        best_params=best,
        best_value=float(study.best_value),
        best_trial=int(study.best_trial.number),
        n_complete=states.count(optuna.trial.TrialState.COMPLETE.name),
        n_pruned=states.count(optuna.trial.TrialState.PRUNED.name),
        n_failed=states.count(optuna.trial.TrialState.FAIL.name),
        best_params_path=path,
        trials=trials,
        days=list(labelled.days),
        mlflow_parent_run_id=_mlflow_parent(tracking_uri, opt.mlflow_experiment, study_name) if tracking_uri else None,
        seconds=time.perf_counter() - started,
    )
    say(f"Best params written to {path} (trial {outcome.best_trial}, F1 Macro {outcome.best_value:.4f}) "
        f"in {outcome.seconds:.0f} s")
    return outcome


# ---------------------------------------------------------------------------------------------
# The final model


def resolve_params(settings: Any, log: LogLike = None, use_best_params: bool = True) -> tuple[dict[str, Any], str]:
    """(model + loop params, where they came from): training.yaml, overridden by
    `best_params.json` when it exists."""
    say, warn = _say(log), _warn(log)
    params = {**settings.training.loop_config(), **settings.training.model_params()}
    path = settings.paths.best_params_path
    if not use_best_params or not path.exists():
        return params, "training config"
    from .tune import load_best_params

    try:
        best = load_best_params(path)
        meta = json.loads(path.read_text())
    except (OSError, ValueError, KeyError) as exc:
        warn(f"Ignoring {path}: unreadable ({exc}); using the training config")
        return params, "training config"
    expected = settings.optimization.study_for(settings.labelling.suffix)
    if isinstance(meta, dict) and meta.get("study_name") not in (None, expected):
        warn(f"{path} comes from study '{meta.get('study_name')}', the current labels are '{expected}'")
    say(f"Using best params from {path}: {json.dumps(best, sort_keys=True)}")
    params.update(best)
    return params, str(path)


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

    def comparison_markdown(self) -> str:
        """Test scores of the model and the baselines, side by side."""
        rows = ["| model | F1 macro | F1 weighted | F1 SELL | F1 NEUTRAL | F1 BUY | net return | trades | hit rate | Sharpe |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, scores in [("model", self.test), *self.baselines.items()]:
            bt = self.backtests.get(name, {})
            rows.append(
                f"| {'**model**' if name == 'model' else name} | {scores['f1_macro']:.4f} | "
                f"{scores['f1_weighted']:.4f} | {scores['f1_sell']:.3f} | {scores['f1_neutral']:.3f} | "
                f"{scores['f1_buy']:.3f} | {_pct(bt.get('net_return'))} | {bt.get('n_trades', 0)} | "
                f"{_pct(bt.get('hit_rate'))} | {_num(bt.get('sharpe'))} |"
            )
        return "\n".join(rows)

    def backtest_markdown(self) -> str:
        bt = self.backtests["model"]
        return "\n".join([
            "| | |", "|---|---:|",
            f"| trades (long / short) | {bt['n_trades']} ({bt['n_long']} / {bt['n_short']}) |",
            f"| net return (compounded, after fees) | {_pct(bt['net_return'])} |",
            f"| gross return | {_pct(bt['gross_return'])} |",
            f"| mean trade | {_pct(bt['mean_trade_return'], 4)} |",
            f"| hit rate | {_pct(bt['hit_rate'])} |",
            f"| annualized Sharpe | {_num(bt['sharpe'])} |",
            f"| max drawdown | {_pct(bt['max_drawdown'])} |",
            f"| fee per side / hold | {100 * bt['fee']:.3f} % / {bt['hold']} min |",
        ])


def _pct(value: Any, digits: int = 2) -> str:
    if value is None or not math.isfinite(float(value)):
        return "–"
    return f"{100 * float(value):.{digits}f} %"


def _num(value: Any) -> str:
    if value is None or not math.isfinite(float(value)):
        return "–"
    return f"{float(value):.2f}"


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

    ends = data.split.test
    first = int(ends[0])
    signals = np.ones(data.arrays.n_rows - first, dtype=np.int64)
    signals[ends - first] = predictions
    result = backtest_signals(signals, data.prices[first:], hold=data.lookahead, fee=fee,
                              minutes=data.minutes[first:])
    return result.summary()


def train_final_model(
    settings: Any,
    log: LogLike = None,
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

    from .baselines import run_baselines
    from .models import build_model
    from .tracking import confusion_figure
    from .train import TrainConfig, evaluate, save_model, train_model

    say = _say(log)
    started = time.perf_counter()
    tr = settings.training
    lab = settings.labelling
    params, source = resolve_params(settings, log, use_best_params)
    arch = str(params.get("arch", tr.arch))
    data = prepare_data(settings, start, end, int(params["n_levels"]), int(params["seq_len"]), with_prices=True)
    if not data.split.test.size:
        raise ValueError(f"the test split is empty ({data.describe()}): label more days")
    say(f"Final model: {arch} | labels {lab.suffix} | params from {source}" + (f" | profile {tr.profile}" if tr.profile else ""))
    say(data.describe())

    cfg = TrainConfig.from_dict({**params, "checkpoint_path": None})
    torch.manual_seed(cfg.seed)
    model = build_model(arch, data.n_features, params)
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

    def checkpoint(m: Any, metrics: Any) -> None:
        save_model(path, m, feature_names=data.arrays.feature_names, scaler_dict=data.scaler.to_dict(),
                   label_settings=label_settings, metrics={"best_val_f1_macro": metrics.f1_macro,
                                                           "best_epoch": metrics.epoch}, extra=extra)

    from ..progress import Progress

    with Progress(cfg.epochs, "training") as progress:  # a bar in a terminal, plain lines in logs
        result = train_model(model, data.dataset("train"), data.dataset("val"), cfg, log=log,
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
    backtests = {"model": _backtest(data, scores["y_pred"], tr.fee)}
    for name, parts in baseline_results.items():
        backtests[name] = _backtest(data, parts["test"].predictions, tr.fee)

    s, n, b = test["f1_sell"], test["f1_neutral"], test["f1_buy"]
    say(f"Test ({test['n']:,} windows) | F1 Macro: {test['f1_macro']:.4f} | F1 Weighted: {test['f1_weighted']:.4f} | "
        f"F1 [S/N/B]: [{s:.3f}/{n:.3f}/{b:.3f}] | Accuracy: {test['accuracy']:.4f}")
    for name, base in baselines.items():
        say(f"Baseline {name:<11} | F1 Macro: {base['f1_macro']:.4f} | F1 [S/N/B]: "
            f"[{base['f1_sell']:.3f}/{base['f1_neutral']:.3f}/{base['f1_buy']:.3f}]")
    bt = backtests["model"]
    say(f"Backtest (fee {100 * tr.fee:.3f} %/side, hold {data.lookahead} min) | trades {bt['n_trades']} | "
        f"net {_pct(bt['net_return'])} | hit rate {_pct(bt['hit_rate'])} | Sharpe {_num(bt['sharpe'])}")
    say(f"Confusion matrix (rows true S/N/B, cols predicted): {test['confusion']}")

    # the final bundle: best weights + test scores
    save_model(path, model, feature_names=data.arrays.feature_names, scaler_dict=data.scaler.to_dict(),
               label_settings=label_settings,
               metrics={"best_val_f1_macro": result.best_f1_macro, "best_epoch": result.best_epoch,
                        **{f"test_{k}": v for k, v in test.items()}},
               extra={**extra, "baselines_test_f1_macro": {k: v["f1_macro"] for k, v in baselines.items()},
                      "backtest": bt})
    say(f"Model saved: {path}")

    confusion_png = _png(confusion_figure(test["confusion"], title=f"Test confusion matrix ({arch})"))
    curve_png = _png(training_curve_figure(result.history, title=f"{arch}: training curve"))
    features_png, correlation_png = feature_pictures(data, log)
    final = FinalModel(
        model_path=path, params=params, params_source=source, history=result.history,
        best_epoch=result.best_epoch, best_val_f1_macro=result.best_f1_macro,
        n_parameters=result.n_parameters, device=result.device, test=test, baselines=baselines,
        backtests=backtests, sizes=data.sizes(), days=list(data.labelled.days),
        confusion_png=confusion_png, curve_png=curve_png,
        features_png=features_png, correlation_png=correlation_png,
    )

    if mlflow:
        _log_to_mlflow(settings, final, model, data, run_tags)
        say(f"MLflow run {final.mlflow_run_id} ({tr.mlflow_tracking_uri}, experiment '{tr.mlflow_experiment}')"
            + (f" | registered '{tr.registered_model}' v{final.registered_version}" if final.registered_version else "")
            + (" | now champion" if final.promoted else " | champion unchanged"
               + (f" (holds test F1 macro {final.previous_champion:.4f})" if final.previous_champion is not None else "")))
    final.seconds = time.perf_counter() - started
    return final


def feature_pictures(data: PreparedData, log: LogLike = None) -> tuple[bytes | None, bytes | None]:
    """(feature histograms raw and scaled with the model's scaler, correlation matrix), both over
    the training rows; (None, None) with a warning when they cannot be drawn."""
    from ..plots import correlation_png, feature_histograms_png

    try:
        rows = rows_covered(data.split.train, data.seq_len, data.arrays.n_rows)
        names = data.arrays.feature_names
        hist = feature_histograms_png(data.features, names, data.scaler, rows=rows,
                                      title="Training rows: features raw and scaled (the model's scaler)")
        corr = correlation_png(data.features, names, rows=rows, title="Training rows: feature correlation")
        return hist.png, corr.png
    except Exception as exc:  # noqa: BLE001 - a picture is never worth failing the model
        _warn(log)(f"feature pictures skipped: {type(exc).__name__}: {exc}")
        return None, None


def _log_to_mlflow(settings: Any, final: FinalModel, model: Any, data: PreparedData,
                   run_tags: Mapping[str, Any] | None) -> None:
    from .tracking import log_final_model

    tr = settings.training
    test = {k: v for k, v in final.test.items() if k != "confusion"}
    extra_metrics: dict[str, Any] = {"best_val_f1_macro": final.best_val_f1_macro,
                                     "best_epoch": final.best_epoch, "n_parameters": final.n_parameters}
    for name, base in final.baselines.items():
        for key in ("f1_macro", "f1_weighted", "f1_sell", "f1_neutral", "f1_buy"):
            extra_metrics[f"baseline_{name}_{key}"] = base[key]
    for name, bt in final.backtests.items():
        prefix = "backtest" if name == "model" else f"backtest_{name}"
        for key in ("net_return", "gross_return", "hit_rate", "sharpe", "n_trades", "max_drawdown"):
            extra_metrics[f"{prefix}_{key}"] = bt[key]
    for part, size in final.sizes.items():
        extra_metrics[f"n_{part}_windows"] = size
    params = {**final.params, "params_source": final.params_source, "label_suffix": settings.labelling.suffix,
              "lookahead": settings.labelling.lookahead, "n_features": data.n_features,
              "data_start": data.labelled.start.isoformat(), "data_end": data.labelled.end.isoformat(),
              "n_days": len(data.labelled.days), "fee": tr.fee}
    example = next(iter(_example_batches(data)))
    with tempfile.TemporaryDirectory(prefix="quantgod_final_") as temp:
        curve = Path(temp) / "training_curve.png"
        curve.write_bytes(final.curve_png)
        pictures = [curve]
        for name, png in (("feature_histograms.png", final.features_png),
                          ("feature_correlation.png", final.correlation_png)):
            if png:
                (Path(temp) / name).write_bytes(png)
                pictures.append(Path(temp) / name)
        run = log_final_model(
            model, params=params, history=final.history, test_metrics=test, confusion=final.test["confusion"],
            input_example=example, tracking_uri=tr.mlflow_tracking_uri, experiment=tr.mlflow_experiment,
            run_name=f"final_{settings.labelling.suffix}", registered_model_name=tr.registered_model,
            artifacts=[final.model_path, *pictures], extra_metrics=extra_metrics,
            tags={"label_suffix": settings.labelling.suffix, **(run_tags or {})},
        )
    final.mlflow_run_id = run.run_id
    final.mlflow_model_uri = run.model_uri
    final.registered_version = run.registered_version
    final.promoted = run.promoted
    final.previous_champion = run.previous_champion_score


def _example_batches(data: PreparedData):
    """Two scaled test windows (float32 [2, seq_len, F]): the model's input example."""
    ends = data.split.test[:2] if data.split.test.size >= 2 else data.split.val[:2]
    offsets = np.arange(-data.seq_len + 1, 1)
    x = data.features[ends[:, None] + offsets]
    yield data.scaler.transform(x)
