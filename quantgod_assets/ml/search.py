"""The `optimization` stage: the Optuna study over the labelled range → best_params.json.

    outcome = run_optimization(load_settings())   # the study, best_params.json, MLflow runs

The study is named after the label suffix (optimization.yaml `study_name` otherwise) and resumes;
the trials themselves run in `tune.run_study`. Lines go to this package's loggers. optuna, torch
and mlflow are imported when the search runs. The storage and tracking URLs connect as given and
are shown (lines, `OptimizationOutcome.storage`, errors) with their passwords masked.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..secrets import redact_url, redacted_errors
from .data import labelled_range, prepare_data
from .dataset import TrainingArrays, build_training_arrays

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["OptimizationOutcome", "run_optimization"]

log = logging.getLogger(__name__)


@dataclass
class OptimizationOutcome:
    study_name: str
    storage: str  # the storage URL as shown: its password masked (`secrets.redact_url`)
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


def run_optimization(
    settings: Settings,
    start: dt.date | str | None = None,
    end: dt.date | str | None = None,
    mlflow: bool = True,
) -> OptimizationOutcome:
    """Runs (or resumes) the study named after the label suffix on the labelled range, writes
    `{DATA_DIR}/optimization/best_params.json`, logs parent + nested runs to MLflow. An error
    quoting the storage's or the tracking URI's password is re-raised with it masked."""
    tracking_uri = settings.training.mlflow.tracking_uri if mlflow else None
    with redacted_errors(settings.optimization.storage, tracking_uri):
        return _run_optimization(settings, start, end, tracking_uri)


def _run_optimization(settings: Settings, start: dt.date | str | None, end: dt.date | str | None,
                      tracking_uri: str | None) -> OptimizationOutcome:
    import optuna

    from .tune import open_study, run_study

    opt = settings.optimization
    started = time.perf_counter()
    labelled = labelled_range(settings, start, end)
    study_name = opt.study_for(settings.labelling.suffix)
    log.info(f"Optimization: study '{study_name}' at {redact_url(opt.storage)} | labels {settings.labelling.suffix} | "
             f"days {labelled.start}..{labelled.end} ({len(labelled.days)}) | "
             f"{opt.n_trials} trials x {opt.epochs_per_trial} epochs"
             + (f" | profile {opt.profile}" if opt.profile else ""))

    cache: dict[int, TrainingArrays] = {}  # one feature matrix per n_levels, shared by the trials

    def make_datasets(params: dict[str, Any]) -> tuple[Any, Any, int]:
        n_levels = int(params.get("n_levels", settings.training.n_levels))
        seq_len = int(params.get("seq_len", settings.training.seq_len))
        if n_levels not in cache:
            cache[n_levels] = build_training_arrays(labelled, n_levels)
        data = prepare_data(settings, n_levels=n_levels, seq_len=seq_len, arrays=cache[n_levels], labelled=labelled)
        log.info(data.describe())
        return data.dataset("train"), data.dataset("val"), data.n_features

    path = settings.paths.best_params_path
    best = run_study(make_datasets, opt, settings.training, study_name, mlflow_tracking_uri=tracking_uri,
                     best_params_path=path)
    written = json.loads(path.read_text(encoding="utf-8"))
    study = open_study(opt, study_name)
    trials = _trial_rows(study)
    states = [t["state"] for t in trials]
    parent = None
    if tracking_uri:
        from .tracking import study_parent_run

        parent = study_parent_run(tracking_uri, opt.mlflow_experiment, study_name)
    outcome = OptimizationOutcome(
        study_name=study_name,
        storage=redact_url(opt.storage),
        best_params=best,
        # from the file run_study wrote with `best`: the study's best may have moved since
        # (other workers share it), and the outcome must name the trial the params came from
        best_value=float("nan") if written["best_value"] is None else float(written["best_value"]),
        best_trial=int(written["best_trial"]),
        n_complete=states.count(optuna.trial.TrialState.COMPLETE.name),
        n_pruned=states.count(optuna.trial.TrialState.PRUNED.name),
        n_failed=states.count(optuna.trial.TrialState.FAIL.name),
        best_params_path=path,
        trials=trials,
        days=list(labelled.days),
        mlflow_parent_run_id=parent,
        seconds=time.perf_counter() - started,
    )
    log.info(f"Best params written to {path} (trial {outcome.best_trial}, F1 Macro {outcome.best_value:.4f}) "
             f"in {outcome.seconds:.0f} s")
    return outcome
