"""The `model` stage: walk-forward validation, the final model, the test block scored once.

    final = train_final_model(load_settings())   # .pth bundle + model card, test vs baselines, MLflow

1. Params: training.yaml, with `{DATA_DIR}/optimization/best_params.json` over them when it
   exists (`resolve_training`); params searched under another profile, labelling or feature code
   are refused with a clear message instead of being used silently.
2. Walk-forward (`evaluation.walk_forward`): the params trained on every fold but the last, each
   fold's validation block scored next to the baselines. The final model is the last fold's
   training (training.yaml `seeds` of them; the one kept is the best on validation).
3. The test block, once: macro-F1 with a moving-block bootstrap interval, model − each baseline
   with its interval and verdict, the seeds' mean ± std, per-class precision / recall, the
   backtest at the side of the book with its interval.
4. MLflow (`tracking.log_final_run`): the alias `champion` moves only to a model whose
   walk-forward score beats persistence, logistic and the holder's; the test score never chooses.

Lines go to this package's loggers; torch and mlflow are imported when the model trains.
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
    backtest_equity_png,
    confusion_figure,
    correlation_png,
    feature_histograms_png,
    fig_png,
    training_curve_figure,
)
from ..secrets import redact_url
from ..settings import LoopSettings
from .data import PreparedData, TooFewWindowsError, prepare_data
from .dataset import rows_covered
from .evaluation import (
    TestReport,
    WalkForwardReport,
    instrument_reports,
    priors_line,
    seed_spread,
    split_priors,
    test_report,
    unseen_reports,
    walk_forward,
)
from .features import FEATURE_CODE_HASH
from .reports import pct

if TYPE_CHECKING:
    from ..settings import Settings, TrainingSettings

__all__ = ["FinalModel", "ParamsMismatchError", "check_search_period", "feature_pictures", "plot_data_path",
           "resolve_training", "train_final_model", "write_plot_data"]

log = logging.getLogger(__name__)
TRAINING_CONFIG = "training config"  # where the params come from when best_params.json is not used


class ParamsMismatchError(ValueError):
    """best_params.json was searched under another profile, labelling or feature code."""


def _searched_under(meta: Mapping[str, Any], settings: Settings) -> list[str]:
    """What differs between where best_params.json was searched and this run, in words."""
    here = {"profile": settings.optimization.profile or "default", "label_suffix": settings.labelling.suffix,
            "feature_hash": FEATURE_CODE_HASH}
    words = {"profile": "profile", "label_suffix": "labels", "feature_hash": "feature code"}
    if not all(key in meta for key in here):
        return ["it records no profile, labels or feature code (written before they were recorded)"]
    return [f"{words[key]} {meta[key]!r} (this run: {value!r})" for key, value in here.items() if meta[key] != value]


def check_search_period(meta: Mapping[str, Any], test_start: dt.datetime, path: Path) -> None:
    """Raises `ParamsMismatchError` when the search behind `meta` saw minutes of this run's test
    block (its own test block started later): the params were chosen partly on it."""
    searched_until = meta.get("test_start")
    if searched_until is None:
        raise ParamsMismatchError(f"{path} records no test_start: run the optimization asset again or remove it")
    if dt.datetime.fromisoformat(searched_until) > test_start:
        raise ParamsMismatchError(
            f"{path} was searched on days {meta.get('data_start')}..{meta.get('data_end')}, which reach into this "
            f"run's test block (from {test_start:%Y-%m-%d %H:%M} UTC): run the optimization asset on this range, "
            "or remove the file to train with training.yaml's params"
        )


def resolve_training(settings: Settings, use_best_params: bool = True
                     ) -> tuple[TrainingSettings, str, dict[str, Any]]:
    """(training settings to train with, where their params came from, best_params.json's record
    or {}): training.yaml, with `best_params.json` over it when it exists. Raises
    `ParamsMismatchError` when the file was searched under another profile, labelling or feature
    code (`check_search_period` checks the days once the test block is known)."""
    training = settings.training
    path = settings.paths.best_params_path
    if not use_best_params or not path.exists():
        return training, TRAINING_CONFIG, {}
    from .tune import load_best_params

    try:
        best = load_best_params(path)
        meta = json.loads(path.read_text())
        resolved = training.with_params(best)
    except (OSError, ValueError, KeyError) as exc:  # ConfigError included: a key that is no setting
        raise ParamsMismatchError(f"{path}: unreadable ({exc}): run the optimization asset again or remove it") from exc
    differences = _searched_under(meta if isinstance(meta, dict) else {}, settings)
    if differences:
        raise ParamsMismatchError(
            f"{path} was searched under {'; '.join(differences)}: run the optimization asset for this "
            "setup first, or remove the file to train with training.yaml's params"
        )
    log.info(f"Using best params from {path} (study '{meta.get('study_name')}', days {meta.get('data_start')}.."
             f"{meta.get('data_end')}): {json.dumps(best, sort_keys=True)}")
    return resolved, str(path), meta


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
    best_val_f1_macro: float  # F1 macro of the kept seed's best epoch on the last fold's validation block
    n_parameters: int
    device: str
    test: dict[str, Any]  # the kept model's test scores: f1_*, precision_*, recall_*, accuracy, confusion, n
    baselines: dict[str, dict[str, Any]]  # name -> the same scores of each baseline on the test block
    backtests: dict[str, dict[str, Any]]  # "model" and each baseline -> BacktestResult.summary()
    sizes: dict[str, int]
    days: list[dt.date]
    confusion_png: bytes
    curve_png: bytes
    walk_forward: WalkForwardReport | None = None
    # several instruments: instrument key -> the same backtests on that instrument's test block
    backtests_by_instrument: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    report: TestReport | None = None
    priors: dict[str, list[float]] = field(default_factory=dict)
    test_period: tuple[str, str] = ("", "")
    metric: str = "f1_macro"  # optimization.yaml `metric`: early stopping, the checkpoint, walk-forward
    seeds: list[int] = field(default_factory=list)
    kept_seed: int = 0
    class_weights: list[float] = field(default_factory=list)
    card_path: Path | None = None
    card: str = ""
    champion_path: Path | None = None  # set when this run became champion: its bundle copied there
    features_png: bytes | None = None  # feature histograms, raw and scaled, on the training rows
    correlation_png: bytes | None = None  # the feature correlation matrix on the training rows
    equity_png: bytes | None = None  # the test block's cumulative net return: model, baselines, flat
    mlflow_run_id: str | None = None
    mlflow_model_uri: str | None = None
    registered_version: str | None = None
    promoted: bool = False
    promotion: str = ""  # why this run became champion, or why not
    previous_champion: float | None = None  # the holder's walk-forward score
    champion_test_f1_macro: float | None = None  # the holder's test score: reported, never used
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return self.report.verdict if self.report else ""


def _backtest(data: PreparedData, predictions: np.ndarray, training: TrainingSettings,
              block_trades: int = 1, instrument: int = 0) -> Any:
    """The test-period backtest of per-window predictions at the side of the book: the signal is
    NEUTRAL except at the test window ends; trades enter at t+1 and hold `lookahead` minutes.
    Over several instruments, one instrument's test block (`instrument`, a block index): no trade
    spans two instruments' rows. None when that instrument has no test window."""
    from .backtest import backtest_book

    if data.bid is None or data.ask is None:
        raise ValueError("the backtest needs the book prices: prepare_data(..., with_prices=True)")
    ends = data.split.test
    mine = data.instrument_of(ends) == instrument
    if not mine.any():
        return None
    ends, predictions = ends[mine], np.asarray(predictions)[mine]
    first, stop = int(ends[0]), data.block_rows(instrument).stop
    signals = np.ones(stop - first, dtype=np.int64)
    signals[ends - first] = predictions
    bt = training.backtest
    result = backtest_book(signals, data.bid[first:stop], data.ask[first:stop], hold=data.lookahead, fee=bt.fee,
                           slippage_bps=bt.slippage_bps, minutes=data.minutes[first:stop], min_trades=bt.min_trades,
                           interval_block=block_trades, resamples=training.evaluation.resamples,
                           confidence=training.evaluation.confidence, seed=training.evaluation.seed)
    return result  # a BacktestResult: .summary() for reports, its trades for the equity curve


def calendar_order(data: PreparedData, ends: np.ndarray) -> np.ndarray:
    """The order of `ends` by calendar minute (stable: instrument order within a minute). Over
    several instruments the pooled test windows are bootstrapped in this order with blocks
    `n_instruments` times as long: a block then holds the same minutes of every instrument, which
    move together, so the interval is not narrowed by counting them as independent. One
    instrument: the windows' own order."""
    if data.n_instruments == 1:
        return np.arange(len(ends))
    return np.argsort(data.minutes[np.asarray(ends)], kind="stable")


@dataclass
class _SeedRun:
    seed: int
    model: Any
    result: Any
    val: dict[str, Any]  # evaluate() on the last fold's validation block
    test: dict[str, Any]  # evaluate() on the test block


class _Trainer:
    """Trains the resolved params on a fold; shared by the walk-forward folds and the final seeds."""

    def __init__(self, settings: Settings, training: TrainingSettings, data: PreparedData):
        from .train import TrainConfig

        self.training, self.data = training, data
        opt = settings.optimization
        self.metric = opt.metric
        self.cfg = TrainConfig.from_settings(training, metric=opt.metric, direction=opt.goal)

    def _config(self, seed: int) -> Any:
        return self.cfg.model_copy(update={"seed": seed})

    def fit(self, train_ds: Any, val_ds: Any, seed: int, **loop: Any) -> tuple[Any, Any]:
        import torch

        from .models import build_model
        from .train import train_model

        torch.manual_seed(seed)
        model = build_model(self.training.arch, self.data.n_features, self.training.model_params())
        return model, train_model(model, train_ds, val_ds, self._config(seed), **loop)

    def scores(self, model: Any, dataset: Any) -> dict[str, Any]:
        from .train import evaluate

        device = next(model.parameters()).device
        return evaluate(model, dataset, device, batch_size=self.cfg.eval_batch_size or 2 * self.cfg.batch_size,
                        amp=self.cfg.amp)

    def fold(self, k: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(y_true, y_pred, best epoch) of fold k's validation block, trained with the first seed."""
        train_ds, val_ds = self.data.fold_datasets(k)
        model, result = self.fit(train_ds, val_ds, self.training.seed, quiet=True)
        val = self.scores(model, val_ds)
        return val["y_true"], val["y_pred"], result.best_epoch


def _better(a: float, b: float, direction: str) -> bool:
    return a < b if direction == "minimize" else a > b


def train_final_model(
    settings: Settings,
    start: dt.date | str | None = None,
    end: dt.date | str | None = None,
    use_best_params: bool = True,
    mlflow: bool = True,
    run_tags: Mapping[str, Any] | None = None,
    dagster_run_id: str | None = None,
) -> FinalModel:
    """Walk-forward validation of the params, the final model (training.yaml `seeds` trainings on
    the last fold; the best on validation kept and saved as the one-file bundle
    `{DATA_DIR}/models/quantgod_cloud_model.pth` with its model card beside it), the test block
    scored ONCE next to the majority / stratified / persistence / logistic baselines with
    intervals, verdicts and a bid/ask backtest, and the MLflow run (the model registered; alias
    `champion` moved by the walk-forward rule)."""
    from ..progress import Progress

    started, started_at = time.perf_counter(), time.time()  # the MLflow run starts here, not when it logs
    lab, opt = settings.labelling, settings.optimization
    training, source, searched = resolve_training(settings, use_best_params)
    params = run_params(training)
    arch = training.arch
    data = prepare_data(settings, start, end, training.n_levels, training.seq_len, with_prices=True)
    if not data.split.test.size:
        raise TooFewWindowsError(f"the test block is empty ({data.describe()}): label more days")
    if searched:
        check_search_period(searched, data.test_start, settings.paths.best_params_path)
    log.info(f"Final model: {arch} | labels {lab.suffix} | params from {source} | metric {opt.metric} ({opt.goal})"
             + (f" | profile {training.profile}" if training.profile else ""))
    log.info(data.describe())
    priors = split_priors(data)
    log.info(priors_line(priors))
    trainer = _Trainer(settings, training, data)

    # the final model: the last fold, once per seed; the one kept is the best on validation
    label_settings = {
        "suffix": lab.suffix, "lookahead": lab.lookahead, "threshold_short": lab.threshold_short,
        "threshold_long": lab.threshold_long, "price_column": lab.price_column, "classes": list(CLASS_NAMES),
    }
    test_period = tuple(t.strftime("%Y-%m-%d %H:%M") for t in (data.period(data.split.test) or ()))
    extra = {
        "params": params, "params_source": source, "n_levels": data.n_levels, "seq_len": data.seq_len,
        "days": [d.isoformat() for d in data.labelled.days], "split": data.sizes(), "purge_minutes": data.split.purge,
        "folds": len(data.folds), "metric": opt.metric, "feature_hash": FEATURE_CODE_HASH,
        "test_period": list(test_period),
    }
    path = settings.paths.model_path
    # mid-training checkpoints go beside the model file: a run that dies leaves the last finished
    # model in place, not a half-trained one under its name
    checkpoint_path = path.with_name(f"{path.stem}.checkpoint{path.suffix}")
    seeds = [training.seed + i for i in range(training.seeds)]
    runs = []
    train_ds, val_ds, test_ds = data.dataset("train"), data.dataset("val"), data.dataset("test")
    for seed in seeds:
        if len(seeds) > 1:
            log.info(f"Final model, seed {seed} ({seeds.index(seed) + 1}/{len(seeds)})")

        def checkpoint(m: Any, metrics: Any, seed: int = seed) -> None:
            from .train import save_model

            save_model(checkpoint_path, m, feature_names=data.arrays.feature_names, scaler_dict=data.scaler.to_dict(),
                       label_settings=label_settings, metrics={f"best_val_{opt.metric}": metrics.value(opt.metric),
                                                               "best_epoch": metrics.epoch, "seed": seed}, extra=extra)

        with Progress(trainer.cfg.epochs, "training") as progress:  # a bar in a terminal, plain lines in logs
            model, result = trainer.fit(
                train_ds, val_ds, seed, checkpoint_fn=checkpoint,
                on_epoch=lambda m: progress.update(note=f"val {opt.metric} {m.value(opt.metric):.4f}"))
        runs.append(_SeedRun(seed, model, result, trainer.scores(model, val_ds), trainer.scores(model, test_ds)))
    kept = runs[0]
    for run in runs[1:]:
        if _better(run.result.best_value, kept.result.best_value, opt.goal):
            kept = run
    if len(runs) > 1:
        log.info(f"Kept seed {kept.seed}: best validation {opt.metric} {kept.result.best_value:.4f} of "
                 + ", ".join(f"{r.result.best_value:.4f}" for r in runs))

    # walk-forward: the other folds trained with the first seed; the last fold is the final training
    last = runs[0].val
    wf = walk_forward(data, opt.metric, trainer.fold, (last["y_true"], last["y_pred"], runs[0].result.best_epoch))

    # the test block, once
    from .baselines import run_baselines

    baseline_results = run_baselines(data.features, data.targets, data.split, data.lookahead, data.keyed_minutes,
                                     on=("test",), scaler=data.scaler)
    scores = kept.test
    # windows overlap in their labels (lookahead) and in their inputs (seq_len): blocks span both
    block = int(training.evaluation.block_minutes or max(lab.lookahead, data.seq_len))
    order, pooled_block = calendar_order(data, data.split.test), block * data.n_instruments
    report = test_report(np.asarray(scores["y_true"])[order], np.asarray(scores["y_pred"])[order],
                         {name: parts["test"].predictions[order] for name, parts in baseline_results.items()},
                         training.evaluation, pooled_block)
    report.seeds = seed_spread([{k: v for k, v in r.test.items() if not isinstance(v, (list, np.ndarray))}
                                for r in runs])
    # several instruments: the same scores per instrument; the unseen instruments, scored only
    baseline_test = {name: parts["test"].predictions for name, parts in baseline_results.items()}
    report.instruments = instrument_reports(data, scores["y_true"], scores["y_pred"], baseline_test,
                                            training.evaluation, block)
    report.unseen = unseen_reports(settings, data, lambda ds: trainer.scores(kept.model, ds), training.evaluation,
                                   block)
    test = {k: v for k, v in report.model.items()}
    test.update(report.instrument_metrics())  # MLflow: test_f1_macro_{instrument}, test_unseen_{instrument}_f1_macro
    signals = {"model": scores["y_pred"], **baseline_test}
    results = {name: _backtest(data, predictions, training) for name, predictions in signals.items()}
    backtests = {name: result.summary() for name, result in results.items()}
    by_instrument: dict[str, dict[str, dict[str, Any]]] = {}
    if data.n_instruments > 1:  # the headline trades the first instrument's block: said wherever it is shown
        for summary in backtests.values():
            summary["instrument"] = data.instrument_keys[0]
        for b, key in enumerate(data.instrument_keys):
            per = {name: _backtest(data, predictions, training, instrument=b) for name, predictions in signals.items()}
            by_instrument[key] = {name: result.summary() for name, result in per.items() if result is not None}
    _log_test(report, backtests["model"], training, data.lookahead, len(runs))

    save_model_bundle(path, kept.model, data, label_settings, extra, kept, report, wf, backtests["model"])
    checkpoint_path.unlink(missing_ok=True)
    log.info(f"Model saved: {path}")
    plot_data = write_plot_data(path, kept.result.history, test["confusion"], results, data)

    features_png, correlation_png_ = feature_pictures(data)
    final = FinalModel(
        model_path=path, params=params, params_source=source, history=kept.result.history,
        best_epoch=kept.result.best_epoch, best_val_f1_macro=float(kept.val["f1_macro"]),
        n_parameters=kept.result.n_parameters, device=kept.result.device, test=test,
        baselines=report.baselines, backtests=backtests, backtests_by_instrument=by_instrument, sizes=data.sizes(),
        days=list(data.labelled.days),
        confusion_png=fig_png(confusion_figure(test["confusion"], title=f"Test confusion matrix ({arch})")),
        curve_png=fig_png(training_curve_figure(kept.result.history, title=f"{arch}: training curve")),
        walk_forward=wf, report=report, priors=priors, test_period=(test_period[0], test_period[1]),
        metric=opt.metric, seeds=seeds, kept_seed=kept.seed, class_weights=list(kept.result.class_weights),
        features_png=features_png, correlation_png=correlation_png_,
        equity_png=backtest_equity_png(plot_data["equity"], plot_data["test_period"][0], plot_data["test_period"][1],
                                       title=f"{arch}: backtest on the test block").png,
        promotion=wf.why_not() or "walk-forward score beats persistence and logistic",
    )
    final.extra = extra
    from .card import model_card, write_model_card

    final.card = model_card(final, settings)  # logged with the run; the file below adds the run's ids

    if mlflow:
        from .tracking import log_final_run

        log_final_run(settings, final, kept.model, data, run_tags, started_at=started_at,
                      dagster_run_id=dagster_run_id)
        store = training.mlflow
        log.info(f"MLflow run {final.mlflow_run_id} ({redact_url(store.tracking_uri)}, experiment '{store.experiment}')"
                 + (f" | registered '{store.registered_model}' v{final.registered_version}"
                    if final.registered_version else "")
                 + f" | {'now champion' if final.promoted else 'champion unchanged'}: {final.promotion}")
    final.card_path, final.card = write_model_card(final, settings)
    log.info(f"Model card: {final.card_path}")
    if final.promoted:
        final.champion_path = publish_champion(settings, final)
        log.info(f"Champion files: {final.champion_path} (+ .md, .json), registered version {final.registered_version}")
    final.seconds = time.perf_counter() - started
    return final


def publish_champion(settings: Settings, final: FinalModel) -> Path:
    """Copies the promoted bundle and its card to `champion.pth` / `champion.md` and writes
    `champion.json` (registered version, run, walk-forward score, data range): one champion on disk
    and in the registry. Each file is replaced atomically; the pointer is written last."""
    import shutil

    from ..storage import atomic_write

    target = settings.paths.champion_path
    atomic_write(target, lambda temp: shutil.copyfile(final.model_path, temp))
    card = final.card_path
    if card is not None:
        atomic_write(target.with_suffix(".md"), lambda temp: shutil.copyfile(card, temp))
    wf = final.walk_forward
    pointer = {
        "registered_version": final.registered_version, "mlflow_run_id": final.mlflow_run_id,
        "model_uri": final.mlflow_model_uri, "source": final.model_path.name,
        "walk_forward": {wf.metric: wf.model_mean} if wf else None, "reason": final.promotion,
        "data_range": f"{final.days[0]}..{final.days[-1]}", "test_period": list(final.test_period),
        "test_f1_macro": final.test["f1_macro"], "verdict": final.verdict,
        "promoted_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    text = json.dumps(pointer, indent=2, sort_keys=True)
    atomic_write(target.with_suffix(".json"), lambda temp: temp.write_text(text, encoding="utf-8"))
    return target


def plot_data_path(model_path: Path) -> Path:
    """`{model}.plots.json` beside the model file: what its pictures are drawn from."""
    return model_path.with_name(f"{model_path.stem}.plots.json")


def write_plot_data(model_path: Path, history: list[Any], confusion: Any, backtests: Mapping[str, Any],
                    data: PreparedData) -> dict[str, Any]:
    """Writes `plot_data_path(model_path)` (JSON, atomically) and returns it: the kept training's
    history per epoch, the test confusion matrix, and each backtest's trades (exit minute as ISO
    UTC, net return) with the test block's first and last minute, for `debug_plots`."""
    from ..storage import atomic_write

    first = int(data.split.test[0])
    span = (data.minutes[first], np.max(data.minutes[first:]))  # the test block's first and last minute

    def iso(minute: Any) -> str:
        return dt.datetime.fromtimestamp(int(minute) * 60, dt.UTC).isoformat(timespec="minutes")

    out = {
        "history": [{"epoch": int(m.epoch), "train_loss": float(m.train_loss), "val_loss": float(m.val_loss),
                     "f1_macro": float(m.f1_macro), "f1_per_class": [float(v) for v in m.f1_per_class]}
                    for m in history],
        "confusion": np.asarray(confusion).tolist(),
        "test_period": [iso(span[0]), iso(span[1])],
        "equity": {name: {"times": [iso(data.minutes[first + int(e) + int(bt.hold)]) for e in bt.entries],
                          "returns": [float(r) for r in bt.trade_returns]} for name, bt in backtests.items()},
    }
    text = json.dumps(out, allow_nan=True)
    atomic_write(plot_data_path(model_path), lambda temp: temp.write_text(text, encoding="utf-8"))
    return out


MAX_BIN_ROWS = 100_000  # training rows the feature deciles are taken from (evenly spaced): a year is 525,600


def training_reference(data: PreparedData) -> dict[str, Any]:
    """What live monitoring compares new days with: each feature's training deciles and the
    training windows' class priors."""
    from .live import feature_bins

    def sampled(rows: np.ndarray) -> np.ndarray:
        if rows.size > MAX_BIN_ROWS:
            rows = rows[np.linspace(0, rows.size - 1, MAX_BIN_ROWS).round().astype(np.int64)]
        return rows

    rows = np.flatnonzero(rows_covered(data.split.train, data.seq_len, data.arrays.n_rows))
    priors = np.bincount(data.targets[data.split.train].astype(np.int64), minlength=3) / max(data.split.train.size, 1)
    reference: dict[str, Any] = {"feature_bins": feature_bins(data.features, sampled(rows)).tolist(),
                                 "train_priors": priors.round(6).tolist()}
    if data.n_instruments > 1:  # each instrument's own deciles: its sizes live on its own scale
        reference["feature_bins_by_instrument"] = {
            key: feature_bins(data.features, sampled(rows[data.instrument_of(rows) == b])).tolist()
            for b, key in enumerate(data.instrument_keys)}
    return reference


def save_model_bundle(path: Path, model: Any, data: PreparedData, label_settings: Mapping[str, Any],
                      extra: Mapping[str, Any], kept: _SeedRun, report: TestReport, wf: WalkForwardReport,
                      backtest: Mapping[str, Any]) -> Path:
    """The one-file bundle: best weights, scaler, labels, walk-forward and test scores, the
    training reference live monitoring compares with."""
    from .train import save_model

    metrics = {"best_val_f1_macro": float(kept.val["f1_macro"]), "best_epoch": kept.result.best_epoch,
               "seed": kept.seed, f"walk_forward_{wf.metric}": wf.model_mean,
               **{f"test_{k}": v for k, v in report.model.items() if k not in ("confusion",)}}
    return save_model(path, model, feature_names=data.arrays.feature_names, scaler_dict=data.scaler.to_dict(),
                      label_settings=label_settings, metrics=metrics,
                      extra={**extra, **training_reference(data),
                             "baselines_test_f1_macro": {k: v["f1_macro"] for k, v in report.baselines.items()},
                             "walk_forward": wf.summary(), "verdicts": report.verdicts, "backtest": dict(backtest)})


def _log_test(report: TestReport, bt: Mapping[str, Any], training: TrainingSettings, lookahead: int,
              n_seeds: int) -> None:
    test = report.model
    s, n, b = test["f1_sell"], test["f1_neutral"], test["f1_buy"]
    log.info(f"Test ({test['n']:,} windows, scored once) | F1 Macro: {report.interval.format()} | "
             f"F1 Weighted: {test['f1_weighted']:.4f} | F1 [S/N/B]: [{s:.3f}/{n:.3f}/{b:.3f}] | "
             f"Accuracy: {test['accuracy']:.4f} ({int(100 * training.evaluation.confidence)} % intervals, "
             f"moving blocks of {report.block} windows)")
    precision = "/".join(f"{test[f'precision_{c}']:.3f}" for c in ("sell", "neutral", "buy"))
    recall = "/".join(f"{test[f'recall_{c}']:.3f}" for c in ("sell", "neutral", "buy"))
    log.info(f"Test precision [S/N/B]: [{precision}] | recall [S/N/B]: [{recall}]")
    if n_seeds > 1:
        mean, std = report.seeds["f1_macro"]
        log.info(f"Test F1 Macro over {n_seeds} seeds: {mean:.4f} ± {std:.4f}")
    for name, base in report.baselines.items():
        log.info(f"Baseline {name:<11} | F1 Macro: {base['f1_macro']:.4f} | F1 [S/N/B]: "
                 f"[{base['f1_sell']:.3f}/{base['f1_neutral']:.3f}/{base['f1_buy']:.3f}] | {report.verdicts[name]}")
    fee = training.backtest.fee
    log.info(f"Backtest at bid/ask (fee {100 * fee:.3f} %/side, slippage {training.backtest.slippage_bps:g} bps, "
             f"hold {lookahead} min) | trades {bt['n_trades']} | net {pct(bt['net_return'])} "
             f"[{pct(bt['net_return_low'])}, {pct(bt['net_return_high'])}] | hit rate {pct(bt['hit_rate'])} | "
             f"Sharpe {bt['sharpe_text']}")
    log.info(f"Confusion matrix (rows true S/N/B, cols predicted): {test['confusion']}")
    log.info(f"Verdict: {report.verdict}")


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
