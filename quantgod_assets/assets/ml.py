"""labelled_frame -> optimization -> model: the thin Dagster layer over `ml.search` and `ml.final`.

Both assets are not partitioned: they read the labelled days of one range (training.yaml `data`,
null = every labelled day present) of the current label suffix, and fail naming the days missing
in it. `dagster asset materialize -m quantgod_assets.definitions --select optimization` (or
`model`) runs them; `QUANTGOD_ML_PROFILE=small` gives the CPU demo's small settings.

- `optimization`: the Optuna study (walk-forward folds; named after labels, profile, data range and
  the search) → best_params.json;
  log `logs/optimization/optimization_{suffix}_{YYYYMMDD_HHMMSS}.log`; MLflow parent + nested runs.
- `model`: walk-forward validation, the final model → `{DATA_DIR}/models/quantgod_cloud_model.pth`
  and its model card, the test block scored once next to the baselines with intervals and verdicts,
  backtested at bid/ask; log `logs/training/training_{YYYYMMDD_HHMMSS}.log`; one MLflow run, the
  model registered (alias `champion` by the walk-forward rule).

The stages log to the `quantgod_assets.ml` loggers; while an asset runs, those lines go to its
file log and, through it, to the Dagster run log (`_stage_log`). torch, optuna and mlflow are
imported when an asset runs, not when the definitions load.

Secrets never reach the event log: the storage and tracking URLs are shown in the metadata with
their passwords masked (`secrets.redact_url`), and an error quoting one fails the run with the
password masked (`secrets.redacted_errors`).
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg

from ..daily.outcome import Markdown
from ..logs import ForwardingHandler, run_log
from ..plots import png_markdown
from ..resources import QuantGodSettings
from ..secrets import redact_url, redacted_errors
from ..settings import Settings, configured_instruments
from .labels import labels_key
from .reporting import metadata_values, run_started

# every configured instrument's labels: training.yaml `instruments` chooses among them at run time
LABELS = [labels_key(i) for i in configured_instruments()]
OPTIMIZATION = dg.AssetKey("optimization")
MODEL = dg.AssetKey("model")
GROUP = "ml"


def _data_failure(exc: Exception, log) -> dg.Failure:
    """A missing-days (or no-days) error as a Dagster failure that names the days."""
    from ..ml.data import MissingDaysError

    log.error(str(exc))
    metadata: dict[str, Any] = {}
    if isinstance(exc, MissingDaysError):
        metadata["missing_days"] = dg.MetadataValue.json([d.isoformat() for d in exc.days])
        metadata["labelled_dir"] = dg.MetadataValue.path(str(exc.label_dir))
    return dg.Failure(description=str(exc), metadata=metadata)


def _secret_urls(settings: Settings) -> tuple[str, str]:
    """The URLs whose passwords must not reach the event log: the study's and MLflow's."""
    return settings.optimization.storage, settings.training.mlflow.tracking_uri


def _data_errors() -> tuple[type[Exception], ...]:
    from ..ml.data import MissingDaysError, NoLabelledDaysError, TooFewWindowsError
    from ..ml.final import ParamsMismatchError

    return (MissingDaysError, NoLabelledDaysError, ParamsMismatchError, TooFewWindowsError)


@contextmanager
def _stage_log(context: dg.AssetExecutionContext, module: str, logs_dir: Path,
               suffix: str | None = None) -> Iterator[logging.Logger]:
    """The run's file log (forwarding to the Dagster run log), fed the ML stages' lines."""
    from ..ml.lines import lines_to

    with (run_log(module, logs_dir, suffix, forward_to=context.log, when=run_started(context)) as log,
          lines_to(ForwardingHandler(log))):
        yield log


@dg.asset(
    key=OPTIMIZATION,
    deps=LABELS,
    group_name=GROUP,
    kinds={"optuna", "pytorch", "mlflow"},
    description="Optuna search (TPE with a seed, MedianPruner) over configs/optimization.yaml's search "
    "space: each trial's value is its mean validation metric over the purged walk-forward folds of the "
    "development period (the test block is never seen). The study is named after labels, profile, data "
    "range and a hash of the search, so new days start a new one; each run adds n_trials. Writes "
    "{DATA_DIR}/optimization/best_params.json with its provenance.",
)
def optimization(context: dg.AssetExecutionContext, quantgod: QuantGodSettings) -> dg.MaterializeResult:
    from ..ml.reports import trials_table
    from ..ml.search import run_optimization

    settings = quantgod.load()
    with (_stage_log(context, "optimization", settings.paths.logs_dir,
                     f"{settings.labelling.suffix}_{settings.model_key}") as log,
          redacted_errors(*_secret_urls(settings))):
        try:
            outcome = run_optimization(settings, dagster_run_id=context.run.run_id)
        except _data_errors() as exc:
            raise _data_failure(exc, log) from exc
        log_path = str(log.log_path)  # type: ignore[attr-defined]  # open_log sets it on the Logger it returns
    storage = redact_url(outcome.storage)  # the study connects with the password; the event log never sees it
    metadata: dict[str, Any] = {
        "study_name": outcome.study_name,
        "storage": storage,
        f"best_mean_{outcome.metric}": round(outcome.best_value, 4),
        "best_fold_scores": dg.MetadataValue.json([round(v, 4) for v in outcome.best_fold_scores or []]),
        "best_trial": outcome.best_trial,
        "best_params": dg.MetadataValue.json(outcome.best_params),
        "best_params_path": dg.MetadataValue.path(str(outcome.best_params_path.resolve())),
        "trials_complete": outcome.n_complete,
        "trials_pruned": outcome.n_pruned,
        "trials_failed": outcome.n_failed,
        "trials": dg.MetadataValue.md(trials_table(outcome)),
        "days": len(outcome.days),
        "first_day": str(outcome.days[0]),
        "last_day": str(outcome.days[-1]),
        "seconds": round(outcome.seconds, 1),
        "log_file": dg.MetadataValue.path(log_path),
        "dashboard": dg.MetadataValue.md(f"`optuna-dashboard {storage}`"),
    }
    if outcome.mlflow_parent_run_id:
        metadata["mlflow_parent_run_id"] = outcome.mlflow_parent_run_id
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(
    key=MODEL,
    deps=[*LABELS, OPTIMIZATION],
    group_name=GROUP,
    kinds={"pytorch", "mlflow"},
    description="The final model: best_params.json when searched for this setup (else training.yaml), "
    "validated walk-forward next to the baselines, trained on the last fold (training.yaml seeds, the best "
    "on validation kept); saved as one file {DATA_DIR}/models/quantgod_cloud_model.pth with its model card; "
    "the test block scored once with bootstrap intervals, verdicts and a bid/ask backtest; logged and "
    "registered in MLflow, champion only when its walk-forward score beats persistence, logistic and the "
    "holder's.",
)
def model(context: dg.AssetExecutionContext, quantgod: QuantGodSettings) -> dg.MaterializeResult:
    from ..ml.final import train_final_model
    from ..ml.reports import backtest_table, comparison_table, walk_forward_table

    settings = quantgod.load()
    with (_stage_log(context, "training", settings.paths.logs_dir, settings.model_key) as log,
          redacted_errors(*_secret_urls(settings))):
        try:
            final = train_final_model(settings, dagster_run_id=context.run.run_id)
        except _data_errors() as exc:
            raise _data_failure(exc, log) from exc
        log_path = str(log.log_path)  # type: ignore[attr-defined]  # open_log sets it on the Logger it returns
    test = final.test
    metadata: dict[str, Any] = {
        "verdict": final.verdict,
        "test_f1_macro": round(test["f1_macro"], 4),
        "test_f1_macro_interval": final.report.interval.format() if final.report else "",
        "test_f1_weighted": round(test["f1_weighted"], 4),
        "test_vs_baselines": dg.MetadataValue.md(comparison_table(final)),
        "walk_forward": dg.MetadataValue.md(walk_forward_table(final)),
        "model_card": dg.MetadataValue.md(final.card),
        "test_period": f"{final.test_period[0]} .. {final.test_period[1]} UTC",
        "class_priors": dg.MetadataValue.json(final.priors),
        # pictures as Markdown: metadata_values adds each one's inline `{key}_inline` form
        "confusion_matrix": Markdown(png_markdown(final.confusion_png, "confusion matrix")),
        "training_curve": Markdown(png_markdown(final.curve_png, "training curve")),
        "backtest": dg.MetadataValue.md(backtest_table(final)),
        "backtest_net_return": float(final.backtests["model"]["net_return"]),
        "backtest_trades": int(final.backtests["model"]["n_trades"]),
        "model_path": dg.MetadataValue.path(str(final.model_path.resolve())),
        "model_card_path": dg.MetadataValue.path(str(final.card_path.resolve())) if final.card_path else "",
        "arch": str(final.params.get("arch")),
        "params_source": final.params_source,
        "params": dg.MetadataValue.json({k: v for k, v in final.params.items() if _jsonable(v)}),
        "parameters": final.n_parameters,
        "device": final.device,
        "best_epoch": final.best_epoch,
        "best_val_f1_macro": round(final.best_val_f1_macro, 4),
        "seeds": dg.MetadataValue.json(final.seeds),
        "windows": dg.MetadataValue.json(final.sizes),
        "days": len(final.days),
        "first_day": str(final.days[0]),
        "last_day": str(final.days[-1]),
        "seconds": round(final.seconds, 1),
        "log_file": dg.MetadataValue.path(log_path),
    }
    if final.equity_png:
        metadata["backtest_equity"] = Markdown(png_markdown(final.equity_png, "backtest equity"))
    if final.features_png:
        metadata["feature_histograms"] = Markdown(png_markdown(final.features_png, "feature histograms"))
    if final.correlation_png:
        metadata["feature_correlation"] = Markdown(png_markdown(final.correlation_png, "feature correlation"))
    for name, base in final.baselines.items():
        metadata[f"baseline_{name}_f1_macro"] = round(base["f1_macro"], 4)
    if final.walk_forward is not None:
        metadata[f"walk_forward_{final.walk_forward.metric}"] = round(final.walk_forward.model_mean, 4)
    if final.mlflow_run_id:
        metadata["mlflow_run_id"] = final.mlflow_run_id
        metadata["mlflow_tracking_uri"] = redact_url(settings.training.mlflow.tracking_uri)
        metadata["registered_version"] = str(final.registered_version)
        metadata["champion"] = bool(final.promoted)
        metadata["champion_reason"] = final.promotion
        if final.champion_path is not None:
            metadata["champion_path"] = dg.MetadataValue.path(str(final.champion_path.resolve()))
        if final.champion_test_f1_macro is not None:  # reported next to ours, never compared
            metadata["previous_champion_test_f1_macro"] = round(final.champion_test_f1_macro, 4)
    return dg.MaterializeResult(metadata=metadata_values(metadata))


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, list, tuple, dict))


ml_assets = [optimization, model]
