"""The Optuna hyper-parameter search.

A persisted study (SQLite by default, any Optuna storage URL otherwise) with a seeded TPE sampler
and a MedianPruner; each trial trains with the shared `train_model` loop and reports its
validation F1 macro every epoch. The datasets depend on searched parameters (`seq_len`,
`n_levels`), so the caller passes `make_datasets(params) -> (train_ds, val_ds, n_features)`.

`n_trials` is the study's total budget: a resumed study runs only the trials still missing,
so re-running after a crash finishes the search instead of starting it over.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import json
import logging
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna
import torch

from .models import build_model
from .train import EpochMetrics, TrainConfig, as_log, train_model

__all__ = [
    "DEFAULT_STORAGE_URL",
    "format_trial_start",
    "load_best_params",
    "make_study",
    "run_study",
    "suggest_params",
]

DEFAULT_STORAGE_URL = "sqlite:///optuna_study.db"

MakeDatasets = Callable[[dict[str, Any]], tuple[Any, Any, int]]


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


def suggest_params(trial: optuna.Trial, search_space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Draws one value per entry of `search_space`, in order:

    - `{"type": "categorical", "choices": [...]}`
    - `{"type": "float", "low", "high", "log"?: bool, "step"?: float}`
    - `{"type": "int", "low", "high", "log"?: bool, "step"?: int}`
    - `{"type": "fixed", "value": v}` (or a bare value): not searched, passed through

    An entry with `"when": {"arch": "transformer"}` is drawn only when the earlier values match
    (architecture-specific parameters).
    """
    params: dict[str, Any] = {}
    for name, spec in search_space.items():
        if not isinstance(spec, Mapping):
            params[name] = spec
            continue
        if not _condition_holds(spec.get("when"), params):
            continue
        kind = str(spec.get("type", "categorical")).lower()
        if kind == "categorical":
            params[name] = trial.suggest_categorical(name, list(spec["choices"]))
        elif kind == "float":
            kwargs: dict[str, Any] = {"log": bool(spec.get("log", False))}
            if spec.get("step") is not None:
                kwargs["step"] = float(spec["step"])
            params[name] = trial.suggest_float(name, float(spec["low"]), float(spec["high"]), **kwargs)
        elif kind == "int":
            params[name] = trial.suggest_int(
                name, int(spec["low"]), int(spec["high"]), step=int(spec.get("step", 1)), log=bool(spec.get("log", False))
            )
        elif kind in ("fixed", "const", "constant"):
            params[name] = spec["value"]
        else:
            raise ValueError(f"search space entry {name!r}: unknown type {kind!r}")
    return params


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
    return f"Trial {number}, Epoch {m.epoch}/{m.epochs} | F1 Macro: {m.f1_macro:.4f} | F1 [S/N/B]: [{s:.3f}/{n:.3f}/{b:.3f}]"


# ---------------------------------------------------------------------------------------------
# Study


def _ensure_sqlite_folder(storage_url: str) -> None:
    if storage_url.startswith("sqlite:///"):
        path = Path(storage_url.removeprefix("sqlite:///"))
        if str(path) not in ("", ":memory:"):
            path.parent.mkdir(parents=True, exist_ok=True)


def make_study(
    storage_url: str = DEFAULT_STORAGE_URL,
    study_name: str = "quantgod",
    seed: int = 42,
    n_startup_trials: int = 5,
    n_warmup_steps: int = 2,
    sampler_startup_trials: int = 10,
) -> optuna.Study:
    """The study at `storage_url`, created or loaded (resumed): maximize, TPE(seed), MedianPruner.

    A `.log` / `.jsonl` path (no URL scheme) is opened as an Optuna journal file, the storage that
    parallel workers on one file system can share.
    """
    storage: Any = storage_url
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
    search_space: Mapping[str, Mapping[str, Any]],
    n_trials: int = 20,
    storage_url: str = DEFAULT_STORAGE_URL,
    study_name: str = "quantgod",
    seed: int = 42,
    n_startup_trials: int = 5,
    n_warmup_steps: int = 2,
    epochs: int = 5,
    log: logging.Logger | Callable[[str], Any] | None = None,
    mlflow_tracking_uri: str | None = None,
    best_params_path: str | Path | None = None,
    train_defaults: Mapping[str, Any] | None = None,
    mlflow_experiment: str = "quantgod-optimization",
    mlflow_artifact_location: str | Path | None = None,
    timeout: float | None = None,
    sampler_startup_trials: int = 10,
) -> dict[str, Any]:
    """Runs (or resumes) the study until it holds `n_trials` finished trials; returns the best
    params (the searched ones plus any fixed entries of the search space).

    Each trial: params from `search_space` → `make_datasets(params)` → `build_model(arch, …)`
    → `train_model` for `epochs` (no early stopping: the pruner decides), reporting validation
    F1 macro each epoch. `train_defaults` (batch_size, weight_decay, class_weights, device…) fill
    what the space does not search. A CUDA out-of-memory error prunes the trial after freeing
    memory. With `mlflow_tracking_uri`, one parent run per study and a nested run per trial.
    """
    say = as_log(log)
    study = make_study(storage_url, study_name, seed, n_startup_trials, n_warmup_steps, sampler_startup_trials)
    finished = [t for t in study.get_trials(deepcopy=False) if t.state in _FINISHED]
    remaining = max(int(n_trials) - len(finished), 0)
    if finished:
        say(f"Resuming study '{study_name}' ({storage_url}): {len(finished)} trials done, {remaining} to run")
    else:
        say(f"Study '{study_name}' ({storage_url}): {remaining} trials, {epochs} epochs each, seed {seed}")

    if mlflow_tracking_uri:
        from .tracking import StudyTracker

        tracker: Any = StudyTracker(mlflow_tracking_uri, mlflow_experiment, study_name, mlflow_artifact_location)
    else:
        tracker = _NullTracker()

    defaults = dict(train_defaults or {})

    def objective(trial: optuna.Trial) -> float:
        params = suggest_params(trial, search_space)
        number = trial.number
        say(format_trial_start(number, params))
        with tracker.trial(number, params):
            oom = False
            invalid: str | None = None
            model = datasets = None
            try:
                train_ds, val_ds, n_features = make_datasets(dict(params))
                datasets = (train_ds, val_ds)
                torch.manual_seed(seed + number)
                model = build_model(params.get("arch", defaults.get("arch", "tcn_lstm")), n_features,
                                    {**defaults, **params})
                cfg = TrainConfig.from_dict({**defaults, **params, "epochs": epochs, "patience": 0,
                                             "seed": seed + number, "checkpoint_path": None})

                def on_epoch(m: EpochMetrics) -> None:
                    say(_format_epoch(number, m))
                    tracker.log_epoch(m.as_mlflow(), m.epoch)
                    trial.report(m.f1_macro, m.epoch)
                    if trial.should_prune():
                        say(f"Trial {number} pruned at epoch {m.epoch}/{m.epochs} (F1 Macro: {m.f1_macro:.4f})")
                        raise optuna.TrialPruned(f"epoch {m.epoch}: F1 Macro {m.f1_macro:.4f}")

                result = train_model(model, train_ds, val_ds, cfg, log=None, on_epoch=on_epoch)
            except torch.OutOfMemoryError:
                oom = True  # handled below, once the traceback (and the tensors it holds) is gone
            except ValueError as exc:
                if "must be a multiple of n_heads" not in str(exc):
                    raise
                invalid = str(exc)
            if oom:
                model = datasets = None  # noqa: F841 - drop the references before collecting
                _free_accelerator_memory()
                say(f"Trial {number} — CUDA OOM! Clearing cache and pruning...")
                raise optuna.TrialPruned("CUDA out of memory")
            if invalid is not None:
                say(f"Trial {number} — invalid parameters ({invalid}), pruning")
                raise optuna.TrialPruned(invalid)
            value = float(result.best_f1_macro)
            say(f"Trial {number} DONE | best F1 Macro: {value:.4f} (epoch {result.best_epoch})")
            tracker.log_trial_value(value)
            trial.set_user_attr("best_epoch", result.best_epoch)
            trial.set_user_attr("n_parameters", result.n_parameters)
            return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tracker.study({"study_name": study_name, "storage_url": storage_url, "n_trials": n_trials,
                        "epochs": epochs, "seed": seed, "search_space": json.dumps(search_space)}):
        if remaining:
            study.optimize(objective, n_trials=remaining, timeout=timeout, gc_after_trial=True)
        trials = study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
        if not complete:
            raise RuntimeError(
                f"study '{study_name}' has no completed trial ({len(pruned)} pruned, {len(trials)} in all)"
            )
        best = study.best_trial
        fixed = {k: (v["value"] if isinstance(v, Mapping) else v) for k, v in search_space.items()
                 if not isinstance(v, Mapping) or str(v.get("type", "")).lower() in ("fixed", "const", "constant")}
        best_params = {**fixed, **best.params}
        say(f"Best trial {best.number} | F1 Macro: {best.value:.4f} | {len(complete)} complete, "
            f"{len(pruned)} pruned | params: {json.dumps(best_params, sort_keys=True)}")
        tracker.log_best(best_params, float(best.value), len(trials))

    if best_params_path is not None:
        write_best_params(best_params_path, best_params, best, study_name, storage_url, len(complete), len(pruned))
    return best_params


def write_best_params(path: str | Path, best_params: Mapping[str, Any], best: optuna.trial.FrozenTrial,
                      study_name: str, storage_url: str, n_complete: int, n_pruned: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "best_params": dict(best_params),
        "best_value": float(best.value) if best.value is not None and math.isfinite(best.value) else None,
        "best_trial": best.number,
        "study_name": study_name,
        "storage_url": storage_url,
        "n_complete": n_complete,
        "n_pruned": n_pruned,
        "written_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(tmp, path)
    return path


def load_best_params(path: str | Path) -> dict[str, Any]:
    """The params of a `best_params.json` (the `best_params` entry; a flat dict is taken as is)."""
    data = json.loads(Path(path).read_text())
    return dict(data["best_params"]) if isinstance(data, dict) and "best_params" in data else dict(data)
