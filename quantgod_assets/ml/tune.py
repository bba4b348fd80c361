"""The Optuna hyper-parameter search.

A persisted study (SQLite by default, any Optuna storage URL otherwise) with a seeded TPE sampler
and a MedianPruner; each trial trains with the shared `train_model` loop and reports its
validation F1 macro every epoch. The datasets depend on searched parameters (`seq_len`,
`n_levels`), so the caller passes `make_datasets(params) -> (train_ds, val_ds, n_features)`.

What to search and how long come from optimization.yaml (`OptimizationSettings`), everything a
trial does not search from training.yaml (`TrainingSettings`). `n_trials` is the study's total budget: a resumed
study runs only the trials still missing, so re-running after a crash finishes the search instead of starting it over.

The storage URL may carry a password (PostgreSQL): the study connects with it, while every line,
MLflow param and best_params.json shows `redact_url(storage_url)`, and an error quoting it is
re-raised with the password masked (`secrets.redacted_errors`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import json
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, get_args

import optuna
import torch
from pydantic import ValidationError

from ..secrets import redact_library_logs, redact_url, redacted_errors
from ..settings import OptimizationSettings, SearchParam, TrainingSettings
from ..storage import atomic_write, sqlite_file
from .models import build_model
from .train import EpochMetrics, TrainConfig, train_model

__all__ = [
    "format_trial_start",
    "load_best_params",
    "make_study",
    "open_study",
    "run_study",
    "suggest_params",
]

_DEFAULT = OptimizationSettings()  # optimization.yaml's defaults, for make_study's own

MakeDatasets = Callable[[dict[str, Any]], tuple[Any, Any, int]]
SearchSpace = Mapping[str, SearchParam | Mapping[str, Any] | Any]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Search space


def _condition_holds(condition: Mapping[str, Any] | None, params: Mapping[str, Any]) -> bool:
    """`{"arch": "transformer"}` or `{"arch": ["a", "b"]}`: every named earlier value matches."""
    if not condition:
        return True
    for key, wanted in condition.items():
        allowed = wanted if isinstance(wanted, (list, tuple, set)) else [wanted]
        if params.get(key) not in allowed:
            return False
    return True


SEARCH_TYPES = get_args(SearchParam.model_fields["type"].annotation)


def _entry(name: str, spec: SearchParam | Mapping[str, Any] | Any) -> SearchParam:
    """A typed entry from optimization.yaml, or the same written as a dict (or a bare fixed value)."""
    if isinstance(spec, SearchParam):
        return spec
    if isinstance(spec, Mapping) and spec.get("type") not in SEARCH_TYPES:
        raise ValueError(f"search space entry {name!r}: unknown type {spec.get('type')!r}; one of {SEARCH_TYPES}")
    try:
        return OptimizationSettings.model_validate({"search_space": {name: spec}}).search_space[name]
    except ValidationError as exc:
        raise ValueError(f"search space entry {name!r}: {exc.errors()[0]['msg']}") from exc


def _bounds(name: str, spec: SearchParam) -> tuple[int | float, int | float]:
    """(low, high) of a float or int entry; SearchParam's validator already requires both."""
    if spec.low is None or spec.high is None:
        raise ValueError(f"search space entry {name!r}: a {spec.type} entry needs low and high")
    return spec.low, spec.high


def suggest_params(trial: optuna.Trial, search_space: SearchSpace) -> dict[str, Any]:
    """Draws one value per entry of `search_space` (`SearchParam`s, or their dicts), in order:

    - `{"type": "categorical", "choices": [...]}`
    - `{"type": "float", "low", "high", "log"?: bool, "step"?: float}`
    - `{"type": "int", "low", "high", "log"?: bool, "step"?: int}`
    - `{"type": "fixed", "value": v}` (or a bare value): not searched, passed through

    An entry with `"when": {"arch": "transformer"}` is drawn only when the earlier values match
    (architecture-specific parameters).
    """
    params: dict[str, Any] = {}
    for name, raw in search_space.items():
        spec = _entry(name, raw)
        if not _condition_holds(spec.when, params):
            continue
        if spec.type == "categorical":
            params[name] = trial.suggest_categorical(name, list(spec.choices or ()))
        elif spec.type == "float":
            low, high = _bounds(name, spec)
            step = float(spec.step) if spec.step is not None else None
            params[name] = trial.suggest_float(name, float(low), float(high), log=spec.log, step=step)
        elif spec.type == "int":
            low, high = _bounds(name, spec)
            params[name] = trial.suggest_int(name, int(low), int(high), step=int(spec.step or 1), log=spec.log)
        else:  # fixed
            params[name] = spec.value
    return params


def _fixed_params(search_space: SearchSpace) -> dict[str, Any]:
    entries = {name: _entry(name, raw) for name, raw in search_space.items()}
    return {name: spec.value for name, spec in entries.items() if spec.type == "fixed"}


def _space_json(search_space: SearchSpace) -> str:
    """The space as written in the file (logged with the study's parent run)."""
    return json.dumps({name: _entry(name, raw).as_dict() for name, raw in search_space.items()})


_SHORT = (
    ("tcn_channels", "tcn", None),
    ("lstm_hidden", "lstm", None),
    ("d_model", "d_model", None),
    ("n_heads", "heads", None),
    ("n_layers", "layers", None),
    ("seq_len", "seq", None),
    ("lr", "lr", "{:.6f}"),
)


def format_trial_start(number: int, params: Mapping[str, Any]) -> str:
    """`Trial 3 START | tcn=64, lstm=256, seq=720, lr=0.000312 | arch=tcn_lstm, dropout=0.2, …`"""
    head, shown = [], set()
    for key, short, fmt in _SHORT:
        if key in params:
            value = params[key]
            head.append(f"{short}={fmt.format(value) if fmt else value}")
            shown.add(key)
    rest = []
    for key, value in params.items():
        if key in shown:
            continue
        rest.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    line = f"Trial {number} START | " + ", ".join(head)
    return line + (" | " + ", ".join(rest) if rest else "")


def _format_epoch(number: int, m: EpochMetrics) -> str:
    s, n, b = m.f1_per_class
    return (f"Trial {number}, Epoch {m.epoch}/{m.epochs} | F1 Macro: {m.f1_macro:.4f} | "
            f"F1 [S/N/B]: [{s:.3f}/{n:.3f}/{b:.3f}]")


# ---------------------------------------------------------------------------------------------
# Study


def _ensure_sqlite_folder(storage_url: str) -> None:
    path = sqlite_file(storage_url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)


def make_study(
    storage_url: str,
    study_name: str,
    seed: int = _DEFAULT.seed,
    n_startup_trials: int = _DEFAULT.pruner.n_startup_trials,
    n_warmup_steps: int = _DEFAULT.pruner.n_warmup_steps,
    sampler_startup_trials: int = _DEFAULT.sampler_startup_trials,
) -> optuna.Study:
    """The study at `storage_url`, created or loaded (resumed): maximize, TPE(seed), MedianPruner.

    A `.log` / `.jsonl` path (no URL scheme) is opened as an Optuna journal file, the storage that
    parallel workers on one file system can share. An error quoting the URL's password (a URL
    SQLAlchemy cannot parse, a failed connection) is re-raised with the password masked.
    """
    redact_library_logs()
    storage: Any = storage_url
    with redacted_errors(storage_url):
        if "://" not in storage_url and storage_url.endswith((".log", ".jsonl", ".journal")):
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend

            Path(storage_url).parent.mkdir(parents=True, exist_ok=True)
            storage = JournalStorage(JournalFileBackend(storage_url))
        else:
            _ensure_sqlite_folder(storage_url)
        return optuna.create_study(
            storage=storage,
            study_name=study_name,
            direction="maximize",
            load_if_exists=True,
            sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=sampler_startup_trials),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=n_warmup_steps),
        )


def open_study(optimization: OptimizationSettings, study_name: str) -> optuna.Study:
    """`make_study` with optimization.yaml's storage, seed, pruner and sampler settings."""
    return make_study(optimization.storage, study_name, optimization.seed, optimization.pruner.n_startup_trials,
                      optimization.pruner.n_warmup_steps, optimization.sampler_startup_trials)


def _free_accelerator_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class _NullTracker:
    """StudyTracker's interface doing nothing: no MLflow (nor its import) without a tracking URI."""

    @contextlib.contextmanager
    def study(self, params=None):
        yield None

    @contextlib.contextmanager
    def trial(self, number, params):
        yield None

    def log_epoch(self, metrics, step):
        pass

    def log_trial_value(self, value):
        pass

    def log_best(self, best_params, best_value, n_trials):
        pass


_FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


def run_study(
    make_datasets: MakeDatasets,
    optimization: OptimizationSettings,
    training: TrainingSettings,
    study_name: str,
    *,
    mlflow_tracking_uri: str | None = None,
    mlflow_artifact_location: str | Path | None = None,
    best_params_path: str | Path | None = None,
) -> dict[str, Any]:
    """Runs (or resumes) the study until it holds `optimization.n_trials` finished trials; returns
    the best params (the searched ones plus any fixed entries of the search space).

    Each trial: params from `optimization.search_space` → `make_datasets(params)` →
    `build_model(arch, …)` → `train_model` for `epochs_per_trial` (no early stopping: the pruner
    decides), reporting validation F1 macro each epoch. `training` (batch_size, weight_decay,
    class_weights, device, model sizes…) fills what the space does not search. A CUDA
    out-of-memory error prunes the trial after freeing memory. With `mlflow_tracking_uri`, one
    parent run per study (in `optimization.mlflow_experiment`) and a nested run per trial.

    The storage and tracking URLs are shown (lines, MLflow params, best_params.json) with their
    passwords masked; an error quoting one is re-raised masked (`secrets.redacted_errors`), before
    Optuna logs a failed trial's error.
    """
    with redacted_errors(optimization.storage, mlflow_tracking_uri):
        return _run_study(make_datasets, optimization, training, study_name, mlflow_tracking_uri,
                          mlflow_artifact_location, best_params_path)


def _run_study(
    make_datasets: MakeDatasets,
    opt: OptimizationSettings,
    training: TrainingSettings,
    study_name: str,
    mlflow_tracking_uri: str | None,
    mlflow_artifact_location: str | Path | None,
    best_params_path: str | Path | None,
) -> dict[str, Any]:
    storage_url, seed, epochs = opt.storage, opt.seed, opt.epochs_per_trial
    shown = redact_url(storage_url)  # what lines, MLflow and best_params.json show
    study = open_study(opt, study_name)
    finished = [t for t in study.get_trials(deepcopy=False) if t.state in _FINISHED]
    remaining = max(int(opt.n_trials) - len(finished), 0)
    if finished:
        log.info(f"Resuming study '{study_name}' ({shown}): {len(finished)} trials done, {remaining} to run")
    else:
        log.info(f"Study '{study_name}' ({shown}): {remaining} trials, {epochs} epochs each, seed {seed}")

    if mlflow_tracking_uri:
        from .tracking import StudyTracker

        tracker: Any = StudyTracker(mlflow_tracking_uri, opt.mlflow_experiment, study_name, mlflow_artifact_location)
    else:
        tracker = _NullTracker()

    def objective(trial: optuna.Trial) -> float:
        params = suggest_params(trial, opt.search_space)
        number = trial.number
        log.info(format_trial_start(number, params))
        # an error quoting a URL is masked here, before Optuna logs it as the trial's failure
        with redacted_errors(storage_url, mlflow_tracking_uri), tracker.trial(number, params):
            oom = False
            invalid: str | None = None
            model = datasets = None
            try:
                train_ds, val_ds, n_features = make_datasets(dict(params))
                datasets = (train_ds, val_ds)
                torch.manual_seed(seed + number)
                settings = training.with_params(params)
                model = build_model(settings.arch, n_features, settings.model_params())
                cfg = TrainConfig.from_settings(settings, epochs=epochs, patience=0, seed=seed + number,
                                                max_batches_per_epoch=opt.max_batches_per_epoch)

                def on_epoch(m: EpochMetrics) -> None:
                    log.info(_format_epoch(number, m))
                    tracker.log_epoch(m.as_mlflow(), m.epoch)
                    trial.report(m.f1_macro, m.epoch)
                    if trial.should_prune():
                        log.info(f"Trial {number} pruned at epoch {m.epoch}/{m.epochs} (F1 Macro: {m.f1_macro:.4f})")
                        raise optuna.TrialPruned(f"epoch {m.epoch}: F1 Macro {m.f1_macro:.4f}")

                result = train_model(model, train_ds, val_ds, cfg, on_epoch=on_epoch, quiet=True)
            except torch.OutOfMemoryError:
                oom = True  # handled below, once the traceback (and the tensors it holds) is gone
            except ValueError as exc:
                if "must be a multiple of n_heads" not in str(exc):
                    raise
                invalid = str(exc)
            if oom:
                model = datasets = None  # noqa: F841 - drop the references before collecting
                _free_accelerator_memory()
                log.info(f"Trial {number} — CUDA OOM! Clearing cache and pruning...")
                raise optuna.TrialPruned("CUDA out of memory")
            if invalid is not None:
                log.info(f"Trial {number} — invalid parameters ({invalid}), pruning")
                raise optuna.TrialPruned(invalid)
            value = float(result.best_f1_macro)
            log.info(f"Trial {number} DONE | best F1 Macro: {value:.4f} (epoch {result.best_epoch})")
            tracker.log_trial_value(value)
            trial.set_user_attr("best_epoch", result.best_epoch)
            trial.set_user_attr("n_parameters", result.n_parameters)
            return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tracker.study({"study_name": study_name, "storage_url": shown, "n_trials": opt.n_trials,
                        "epochs": epochs, "seed": seed, "search_space": _space_json(opt.search_space)}):
        if remaining:
            study.optimize(objective, n_trials=remaining, timeout=opt.timeout_s, gc_after_trial=True)
        trials = study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
        if not complete:
            raise RuntimeError(
                f"study '{study_name}' has no completed trial ({len(pruned)} pruned, {len(trials)} in all)"
            )
        best = study.best_trial
        if best.value is None:  # best_trial is a completed trial, which always has its value
            raise RuntimeError(f"study '{study_name}': the best trial {best.number} has no value")
        best_params = {**_fixed_params(opt.search_space), **best.params}
        log.info(f"Best trial {best.number} | F1 Macro: {best.value:.4f} | {len(complete)} complete, "
            f"{len(pruned)} pruned | params: {json.dumps(best_params, sort_keys=True)}")
        tracker.log_best(best_params, float(best.value), len(trials))

    if best_params_path is not None:
        write_best_params(best_params_path, best_params, best, study_name, shown, len(complete), len(pruned))
    return best_params


def write_best_params(path: str | Path, best_params: Mapping[str, Any], best: optuna.trial.FrozenTrial,
                      study_name: str, storage_url: str, n_complete: int, n_pruned: int) -> Path:
    """best_params.json: the params, the best trial and the study (its storage URL password-masked)."""
    payload = {
        "best_params": dict(best_params),
        "best_value": float(best.value) if best.value is not None and math.isfinite(best.value) else None,
        "best_trial": best.number,
        "study_name": study_name,
        "storage_url": redact_url(storage_url),
        "n_complete": n_complete,
        "n_pruned": n_pruned,
        "written_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    text = json.dumps(payload, indent=2, sort_keys=True)
    return atomic_write(path, lambda temp: temp.write_text(text))


def load_best_params(path: str | Path) -> dict[str, Any]:
    """The params of a `best_params.json` (the `best_params` entry; a flat dict is taken as is)."""
    data = json.loads(Path(path).read_text())
    return dict(data["best_params"]) if isinstance(data, dict) and "best_params" in data else dict(data)
