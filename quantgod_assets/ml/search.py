"""The `optimization` stage: the Optuna study over the labelled range → best_params.json.

    outcome = run_optimization(load_settings())   # the study, best_params.json, MLflow runs

The study is named after what it searched (`study_name`: labels, profile, data range and a hash of
the feature code, search space, folds and metric; optimization.yaml `study_name` otherwise), so a
run over other days or another search starts a new study, and a run over the same ones adds
`n_trials` trials to it. best_params.json records the study, profile, data range and hashes
(`search_provenance`), which the `model` stage checks. The trials run in `tune.run_study`.
Lines go to this package's loggers. optuna, torch
and mlflow are imported when the search runs. The storage and tracking URLs connect as given and
are shown (lines, `OptimizationOutcome.storage`, errors) with their passwords masked.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..secrets import redact_url, redacted_errors
from .data import prepare_data, range_test_start, training_ranges
from .dataset import LabelledRange, TrainingArrays, build_training_arrays
from .features import FEATURE_CODE_HASH

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["OptimizationOutcome", "run_optimization", "search_provenance", "study_name"]

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
    best_fold_scores: list[float] | None = None  # the best trial's validation score on each walk-forward fold
    metric: str = "f1_macro"


# training.yaml keys that do not change what a trial computes (where it runs, what the final model does)
# (`seed` too: a trial trains with optimization.yaml's seed + its number, never training.yaml's)
_NOT_SEARCH_RELEVANT = {"device", "log_every", "seeds", "seed", "data", "backtest", "evaluation", "mlflow", "epochs",
                        "patience"}


def _search_hash(settings: Settings) -> str:
    """A hash of everything that decides a trial's value besides the data: the search space,
    folds, embargo, test share, metric, epochs per trial and the training settings trials use."""
    opt, training = settings.optimization, settings.training
    searched = {
        "space": {name: spec.as_dict() for name, spec in opt.search_space.items()},
        "folds": opt.folds, "embargo": opt.embargo_minutes, "test": training.split.test,
        "metric": opt.metric, "direction": opt.goal, "epochs_per_trial": opt.epochs_per_trial,
        "max_batches_per_epoch": opt.max_batches_per_epoch,
        "training": training.model_dump(mode="json", exclude=_NOT_SEARCH_RELEVANT),
        "labels": settings.labelling.model_dump(mode="json"),
    }
    return hashlib.sha256(json.dumps(searched, sort_keys=True, default=str).encode()).hexdigest()[:12]


def search_provenance(settings: Settings, labelled: LabelledRange | Sequence[LabelledRange]) -> dict[str, Any]:
    """Where a search ran: training instruments, profile, label suffix, data range (one range, or
    one per training instrument over the same days) and the feature-code and search hashes."""
    ranges = [labelled] if isinstance(labelled, LabelledRange) else list(labelled)
    labelled = ranges[0]
    return {
        "profile": settings.optimization.profile or "default",
        "label_suffix": settings.labelling.suffix,
        "instruments": settings.model_key,  # the training instruments: `BTCUSDT_linear+ETHUSDT_linear`
        "data_start": labelled.start.isoformat(),
        "data_end": labelled.end.isoformat(),
        "n_days": len(labelled.days),
        # the search never saw anything from here on: a model whose test block starts earlier refuses these params
        "test_start": range_test_start(settings, ranges).isoformat(timespec="minutes"),
        "feature_hash": FEATURE_CODE_HASH,
        "search_hash": _search_hash(settings),
    }


def study_name(settings: Settings, labelled: LabelledRange | Sequence[LabelledRange]) -> str:
    """optimization.yaml `study_name` when set, else `{training instruments}_{labels}_{profile}_
    {first day}_{last day}_{hash of feature code + search}`."""
    opt = settings.optimization
    if opt.study_name:
        return opt.study_name
    p = search_provenance(settings, labelled)
    digest = hashlib.sha256(f"{p['feature_hash']}:{p['search_hash']}".encode()).hexdigest()[:8]
    return f"{p['instruments']}_{p['label_suffix']}_{p['profile']}_{p['data_start']}_{p['data_end']}_{digest}"


def _trial_rows(study: Any) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({
            "number": t.number,
            "state": t.state.name,
            "value": float(t.value) if t.value is not None and math.isfinite(t.value) else None,
            "params": dict(t.params),
            "epochs": {int(k): float(v) for k, v in t.intermediate_values.items()},
            "fold_scores": t.user_attrs.get("fold_scores"),
        })
    return rows


def run_optimization(
    settings: Settings,
    start: dt.date | str | None = None,
    end: dt.date | str | None = None,
    mlflow: bool = True,
    dagster_run_id: str | None = None,
) -> OptimizationOutcome:
    """Adds `n_trials` trials to the study named after the labelled range and the search
    (`study_name`), writes `{DATA_DIR}/optimization/best_params.json` with its provenance, logs
    parent + nested runs to MLflow (tagged with `dagster_run_id` when Dagster launched it). An
    error quoting the storage's or the tracking URI's password is re-raised with it masked."""
    tracking_uri = settings.training.mlflow.tracking_uri if mlflow else None
    with redacted_errors(settings.optimization.storage, tracking_uri):
        return _run_optimization(settings, start, end, tracking_uri, dagster_run_id)


def _run_optimization(settings: Settings, start: dt.date | str | None, end: dt.date | str | None,
                      tracking_uri: str | None, dagster_run_id: str | None = None) -> OptimizationOutcome:
    import optuna

    from .tune import open_study, run_study

    opt = settings.optimization
    started = time.perf_counter()
    ranges = training_ranges(settings, start, end)  # one per training instrument, the same days
    labelled = ranges[0]
    name = study_name(settings, ranges)
    log.info(f"Optimization: study '{name}' at {redact_url(opt.storage)} | labels {settings.labelling.suffix} | "
             f"days {labelled.start}..{labelled.end} ({len(labelled.days)}) | "
             f"{opt.n_trials} trials x {opt.folds} folds x {opt.epochs_per_trial} epochs | objective: mean "
             f"validation {opt.metric} ({opt.goal})" + (f" | profile {opt.profile}" if opt.profile else ""))

    cache: dict[int, list[TrainingArrays]] = {}  # the instruments' matrices per n_levels, shared by the trials

    def make_datasets(params: dict[str, Any]) -> Any:
        n_levels = int(params.get("n_levels", settings.training.n_levels))
        seq_len = int(params.get("seq_len", settings.training.seq_len))
        if n_levels not in cache:
            cache[n_levels] = [build_training_arrays(r, n_levels) for r in ranges]
        data = prepare_data(settings, n_levels=n_levels, seq_len=seq_len, arrays=cache[n_levels], labelled=ranges)
        log.info(data.describe())
        return data  # the walk-forward folds; the test block is never touched here

    path = settings.paths.best_params_path
    instrument = ""
    if tracking_uri:
        from .tracking import instrument_label

        instrument = instrument_label(settings)
    best = run_study(make_datasets, opt, settings.training, name, mlflow_tracking_uri=tracking_uri,
                     best_params_path=path, provenance=search_provenance(settings, ranges),
                     instrument=instrument, dagster_run_id=dagster_run_id)
    written = json.loads(path.read_text(encoding="utf-8"))
    study = open_study(opt, name)
    trials = _trial_rows(study)
    states = [t["state"] for t in trials]
    parent = None
    if tracking_uri:
        from .tracking import study_parent_run

        parent = study_parent_run(tracking_uri, opt.mlflow_experiment, name)
    outcome = OptimizationOutcome(
        study_name=name,
        storage=redact_url(opt.storage),
        best_params=best,
        # from the file run_study wrote with `best`: the study's best may have moved since
        # (other workers share it), and the outcome must name the trial the params came from
        best_value=float("nan") if written["best_value"] is None else float(written["best_value"]),
        best_trial=int(written["best_trial"]),
        best_fold_scores=list(written.get("best_fold_scores") or []),
        metric=opt.metric,
        n_complete=states.count(optuna.trial.TrialState.COMPLETE.name),
        n_pruned=states.count(optuna.trial.TrialState.PRUNED.name),
        n_failed=states.count(optuna.trial.TrialState.FAIL.name),
        best_params_path=path,
        trials=trials,
        days=list(labelled.days),
        mlflow_parent_run_id=parent,
        seconds=time.perf_counter() - started,
    )
    log.info(f"Best params written to {path} (trial {outcome.best_trial}, mean {opt.metric} {outcome.best_value:.4f} "
             f"over {len(outcome.best_fold_scores or [])} folds) in {outcome.seconds:.0f} s")
    return outcome
