"""The Optuna hyper-parameter search.

A persisted study (SQLite by default, any Optuna storage URL otherwise) with a seeded TPE sampler
and a MedianPruner; each trial trains with the shared `train_model` loop once per walk-forward
fold and its value is the MEAN over the folds of the validation metric (optimization.yaml
`metric`, in its `direction`). Every epoch of every fold is reported (step = fold × epochs +
epoch), so the pruner compares a trial with the others at the same fold and epoch. The datasets
depend on searched parameters (`seq_len`, `n_levels`), so the caller passes
`make_datasets(params)`, returning a `FoldData` (`data.PreparedData` is one) or, for a single
split, `(train_ds, val_ds, n_features)`.

What to search and how long come from optimization.yaml (`OptimizationSettings`), everything a
trial does not search from training.yaml (`TrainingSettings`). `n_trials` is how many trials each
run ADDS to its study; the study is named after what it searched (`search.study_name`), so new
data or another search space starts a new study instead of silently reusing old trials.

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
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

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

_DEFAULT = OptimizationSettings()
SCHEMA_ATTEMPTS = 4  # optimization.yaml's defaults, for make_study's own



class FoldData(Protocol):
    """What a trial trains on: walk-forward folds, each a (train, validation) pair of datasets."""

    @property
    def folds(self) -> list[Any]: ...

    @property
    def n_features(self) -> int: ...

    def fold_datasets(self, k: int) -> tuple[Any, Any]: ...


class _OneSplit:
    """A single (train, validation) pair as one fold."""

    def __init__(self, train_ds: Any, val_ds: Any, n_features: int):
        self.folds = [None]
        self.n_features = int(n_features)
        self._pair = (train_ds, val_ds)

    def fold_datasets(self, k: int) -> tuple[Any, Any]:
        return self._pair


def _as_folds(made: Any) -> FoldData:
    return _OneSplit(*made) if isinstance(made, tuple) else made


MakeDatasets = Callable[[dict[str, Any]], "FoldData | tuple[Any, Any, int]"]
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


def _format_epoch(number: int, fold: str, m: EpochMetrics, metric: str) -> str:
    s, n, b = m.f1_per_class
    f1 = f"F1 Macro: {m.f1_macro:.4f} | " if metric != "f1_macro" else ""
    return (f"Trial {number}{fold}, Epoch {m.epoch}/{m.epochs} | {metric}: {m.value(metric):.4f} | "
            f"{f1}F1 [S/N/B]: [{s:.3f}/{n:.3f}/{b:.3f}]")


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
    direction: Literal["maximize", "minimize"] = "maximize",
) -> optuna.Study:
    """The study at `storage_url`, created or loaded (resumed): `direction`, TPE(seed), MedianPruner.

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
        for attempt in range(SCHEMA_ATTEMPTS):
            try:
                return optuna.create_study(
                    storage=storage,
                    study_name=study_name,
                    direction=direction,
                    load_if_exists=True,
                    sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=sampler_startup_trials),
                    pruner=optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials,
                                                       n_warmup_steps=n_warmup_steps),
                )
            except Exception as exc:
                # workers starting together on an empty database race to create Optuna's tables
                # (PostgreSQL: a duplicate key on its catalog); the loser finds them made on a retry
                if type(exc).__name__ not in ("IntegrityError", "ProgrammingError") or attempt == SCHEMA_ATTEMPTS - 1:
                    raise
                time.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")


def open_study(optimization: OptimizationSettings, study_name: str) -> optuna.Study:
    """`make_study` with optimization.yaml's storage, seed, pruner, sampler and direction."""
    return make_study(optimization.storage, study_name, optimization.seed, optimization.pruner.n_startup_trials,
                      optimization.pruner.n_warmup_steps, optimization.sampler_startup_trials, optimization.goal)


def _searched_arch(search_space: SearchSpace, default: str) -> str:
    """The architecture(s) a study may train, for its run's name: `tcn_lstm/transformer`."""
    if "arch" not in search_space:
        return default
    spec = _entry("arch", search_space["arch"])
    if spec.type == "categorical":
        return "/".join(str(c) for c in spec.choices or ())
    return str(spec.value) if spec.type == "fixed" else default


def _data_range(provenance: Mapping[str, Any]) -> str:
    """`first..last` labelled day of the search (its provenance), or "" when not given."""
    start, end = provenance.get("data_start"), provenance.get("data_end")
    return f"{start}..{end}" if start and end else ""


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

    def log_trial_value(self, value, metric="f1_macro", fold_scores=()):
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
    provenance: Mapping[str, Any] | None = None,
    instrument: str = "",
    dagster_run_id: str | None = None,
) -> dict[str, Any]:
    """Adds `optimization.n_trials` trials to the study (created or resumed); returns the best
    params (the searched ones plus any fixed entries of the search space).

    Each trial: params from `optimization.search_space` → `make_datasets(params)` → for every
    walk-forward fold `build_model(arch, …)` → `train_model` for `epochs_per_trial` (no early
    stopping: the pruner decides), reporting the fold's validation metric each epoch; the trial's
    value is the mean of the folds' best values (each fold's score is logged and kept in the
    trial's `fold_scores`). `training` (batch_size, weight_decay, class_weights, device, model
    sizes…) fills what the space does not search. A CUDA out-of-memory error prunes the trial
    after freeing memory. With `mlflow_tracking_uri`, one parent run per study (in
    `optimization.mlflow_experiment`) and a nested run per trial, named after the arch, the
    `instrument` (`tracking.instrument_label`), the data range of `provenance` and the start
    (`tracking.run_name`), tagged with `dagster_run_id` when Dagster launched the search.
    `provenance` (profile, data range, hashes) is written into best_params.json beside the params.

    The storage and tracking URLs are shown (lines, MLflow params, best_params.json) with their
    passwords masked; an error quoting one is re-raised masked (`secrets.redacted_errors`), before
    Optuna logs a failed trial's error.
    """
    with redacted_errors(optimization.storage, mlflow_tracking_uri):
        return _run_study(make_datasets, optimization, training, study_name, mlflow_tracking_uri,
                          mlflow_artifact_location, best_params_path, provenance or {},
                          {"instrument": instrument, "dagster_run_id": dagster_run_id})


class _Objective:
    """One trial: the params' walk-forward folds trained in turn, the mean validation metric returned."""

    def __init__(self, make_datasets: MakeDatasets, opt: OptimizationSettings, training: TrainingSettings,
                 tracker: Any, secret_urls: tuple[str | None, ...]):
        self.make_datasets, self.opt, self.training = make_datasets, opt, training
        self.tracker, self.secret_urls = tracker, secret_urls

    def __call__(self, trial: optuna.Trial) -> float:
        params = suggest_params(trial, self.opt.search_space)
        log.info(format_trial_start(trial.number, params))
        # an error quoting a URL is masked here, before Optuna logs it as the trial's failure
        with redacted_errors(*self.secret_urls), self.tracker.trial(trial.number, params):
            return self._folds(trial, params)

    def _folds(self, trial: optuna.Trial, params: dict[str, Any]) -> float:
        opt, number = self.opt, trial.number
        try:
            data = _as_folds(self.make_datasets(dict(params)))
            settings = self.training.with_params(params)
            scores = []
            for k in range(len(data.folds)):
                scores.append(self._fold(trial, params, settings, data, k))
        except torch.OutOfMemoryError:
            data = None
            _free_accelerator_memory()
            log.info(f"Trial {number} — CUDA OOM! Clearing cache and pruning...")
            raise optuna.TrialPruned("CUDA out of memory") from None
        except ValueError as exc:
            if "must be a multiple of n_heads" not in str(exc):
                raise
            log.info(f"Trial {number} — invalid parameters ({exc}), pruning")
            raise optuna.TrialPruned(str(exc)) from None
        value = float(sum(scores) / len(scores))
        shown = ", ".join(f"{v:.4f}" for v in scores)
        log.info(f"Trial {number} DONE | mean {opt.metric} over {len(scores)} fold(s): {value:.4f} | folds: [{shown}]")
        self.tracker.log_trial_value(value, opt.metric, scores)
        trial.set_user_attr("fold_scores", scores)
        return value

    def _fold(self, trial: optuna.Trial, params: dict[str, Any], settings: TrainingSettings, data: FoldData,
              k: int) -> float:
        opt, number, epochs = self.opt, trial.number, self.opt.epochs_per_trial
        train_ds, val_ds = data.fold_datasets(k)
        seed = opt.seed + number
        torch.manual_seed(seed)
        model = build_model(settings.arch, data.n_features, settings.model_params())
        cfg = TrainConfig.from_settings(settings, epochs=epochs, patience=0, seed=seed,
                                        max_batches_per_epoch=opt.max_batches_per_epoch,
                                        metric=opt.metric, direction=opt.goal)
        fold = f" fold {k + 1}/{len(data.folds)}" if len(data.folds) > 1 else ""

        def on_epoch(m: EpochMetrics) -> None:
            value = m.value(opt.metric)
            log.info(_format_epoch(number, fold, m, opt.metric))
            step = k * epochs + m.epoch
            self.tracker.log_epoch(m.as_mlflow(), step)
            trial.report(value, step)
            if trial.should_prune():
                log.info(f"Trial {number} pruned at{fold} epoch {m.epoch}/{m.epochs} ({opt.metric}: {value:.4f})")
                raise optuna.TrialPruned(f"fold {k + 1} epoch {m.epoch}: {opt.metric} {value:.4f}")

        result = train_model(model, train_ds, val_ds, cfg, on_epoch=on_epoch, quiet=True)
        trial.set_user_attr(f"fold_{k + 1}_best_epoch", result.best_epoch)
        trial.set_user_attr("n_parameters", result.n_parameters)
        return float(result.best_value)


def _run_study(
    make_datasets: MakeDatasets,
    opt: OptimizationSettings,
    training: TrainingSettings,
    study_name: str,
    mlflow_tracking_uri: str | None,
    mlflow_artifact_location: str | Path | None,
    best_params_path: str | Path | None,
    provenance: Mapping[str, Any],
    run_labels: Mapping[str, Any],
) -> dict[str, Any]:
    storage_url, seed, epochs = opt.storage, opt.seed, opt.epochs_per_trial
    shown = redact_url(storage_url)  # what lines, MLflow and best_params.json show
    study = open_study(opt, study_name)
    finished = [t for t in study.get_trials(deepcopy=False) if t.state in _FINISHED]
    if finished:
        log.info(f"Study '{study_name}' ({shown}) holds {len(finished)} finished trials: adding {opt.n_trials}")
    else:
        log.info(f"Study '{study_name}' ({shown}): {opt.n_trials} trials, {epochs} epochs per fold, seed {seed}, "
                 f"objective: mean {opt.metric} over the walk-forward folds ({opt.goal})")

    if mlflow_tracking_uri:
        from .tracking import StudyTracker

        tracker: Any = StudyTracker(mlflow_tracking_uri, opt.mlflow_experiment, study_name, mlflow_artifact_location,
                                    arch=_searched_arch(opt.search_space, training.arch),
                                    data_range=_data_range(provenance), **run_labels)
    else:
        tracker = _NullTracker()
    objective = _Objective(make_datasets, opt, training, tracker, (storage_url, mlflow_tracking_uri))

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tracker.study({"study_name": study_name, "storage_url": shown, "n_trials": opt.n_trials,
                        "epochs": epochs, "seed": seed, "metric": opt.metric, "direction": opt.goal,
                        "folds": opt.folds, "search_space": _space_json(opt.search_space), **provenance}):
        study.optimize(objective, n_trials=opt.n_trials, timeout=opt.timeout_s, gc_after_trial=True)
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
        log.info(f"Best trial {best.number} | mean {opt.metric}: {best.value:.4f} | {len(complete)} complete, "
                 f"{len(pruned)} pruned | params: {json.dumps(best_params, sort_keys=True)}")
        tracker.log_best(best_params, float(best.value), len(trials))

    if best_params_path is not None:
        write_best_params(best_params_path, best_params, best, study_name, shown, len(complete), len(pruned),
                          {"metric": opt.metric, "direction": opt.goal, "folds": opt.folds, **provenance})
    return best_params


def write_best_params(path: str | Path, best_params: Mapping[str, Any], best: optuna.trial.FrozenTrial,
                      study_name: str, storage_url: str, n_complete: int, n_pruned: int,
                      provenance: Mapping[str, Any] | None = None) -> Path:
    """best_params.json: the params, the best trial (its per-fold scores), the study (its storage
    URL password-masked) and where the search ran (`provenance`: profile, data range, hashes)."""
    payload = {
        **dict(provenance or {}),
        "best_params": dict(best_params),
        "best_value": float(best.value) if best.value is not None and math.isfinite(best.value) else None,
        "best_fold_scores": best.user_attrs.get("fold_scores"),
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
