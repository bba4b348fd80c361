"""MLflow helpers: one parent run per Optuna study with a nested run per trial, and the final
model's run (params, per-epoch metrics, walk-forward and test metrics with intervals, verdicts,
pictures, the model card, the model itself, registered).

The alias `champion` moves only by walk-forward validation scores (`promote_if_better`): a model
is eligible when its walk-forward score beats persistence's and logistic's, and it takes the alias
when it also beats the holder's. The test score is logged and reported, never compared.

The default store is a local SQLite file (`sqlite:///mlflow.db`) with artifacts in a folder
beside it, so everything works offline; `mlflow ui --backend-store-uri sqlite:///mlflow.db`
shows the runs. Where: training.yaml `mlflow:` (`MlflowSettings`); the pictures come from
`plots.py`.

Every run says what differs in its name, `{kind} {arch} {instrument(s)} {data range} {UTC start}`
(`run_name`): `study tcn_lstm/transformer BTCUSDT 2025-03-10..2025-03-12 03-14 10:41` (the
parent run; the arch part is what the search may choose), `trial 3 tcn_lstm BTCUSDT
2025-03-10..2025-03-12 03-14 10:43`, `final tcn_lstm BTCUSDT 2025-03-10..2025-03-12 03-14 10:41`;
the instrument part is `instrument_label(settings)` everywhere. A run starts when its work
starts and ends when it ends: the final model's run is created with the time `train_final_model`
began (`started_at`), not when its results are logged. The final run leads with its headline
(`headline`): tags `test_f1_macro` (`0.412 [0.351, 0.470]`), `baseline_<name>` (test macro-F1),
`verdict`, `backtest_net_return` (`+1.23 % [-0.50 %, +2.90 %] (42 trades)`), and the artifacts
`summary.md` / `summary.json`, beside the full metrics. A run launched by Dagster carries
`dagster_run_id` and `dagster_run_url` (`dagster_tags`).

A tracking URI may carry a password (`http://user:password@mlflow:5000`, a PostgreSQL store):
MLflow connects with it, nothing here logs it as a param or tag, MLflow's own loggers mask it
and its "View run at <URL>" lines are off for such a URI, and an MLflow error quoting it is
re-raised with the password masked (`secrets.redacted_errors`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from ..labelling import CLASS_NAMES
from ..plots import confusion_figure
from ..secrets import redact_library_logs, redact_url, redacted_errors, url_secrets
from ..storage import sqlite_file

if TYPE_CHECKING:
    from ..settings import Settings
    from .data import PreparedData
    from .final import FinalModel

__all__ = [
    "DAGSTER_URL_ENV",
    "FinalRun",
    "Promotion",
    "StudyTracker",
    "current_champion",
    "dagster_tags",
    "headline",
    "headline_tags",
    "instrument_label",
    "log_final_model",
    "log_final_run",
    "promote_if_better",
    "run_name",
    "setup_mlflow",
    "study_parent_run",
    "summary_markdown",
]

CHAMPION = "champion"
CHAMPION_METRIC = "walk_forward_f1_macro"  # the model-version tag promotion compares (walk_forward_<metric>)


DAGSTER_URL_ENV = "DAGSTER_WEBSERVER_URL"  # the Dagster UI's base URL, for `dagster_run_url`
DAGSTER_URL_DEFAULT = "http://127.0.0.1:3000"  # `dagster dev`'s


# ---------------------------------------------------------------------------------------------
# What a run is called and what it links to


def instrument_label(settings: Settings) -> str:
    """The instrument(s) a run trained on, as run names, tags and the model card show them: the
    one place that says it (training.yaml `instruments`: `BTCUSDT_linear`, `BTCUSDT_linear+ETHUSDT_linear`)."""
    return settings.model_key


def _utc(when: float | dt.datetime | None) -> dt.datetime:
    if when is None:
        return dt.datetime.now(dt.UTC)
    if isinstance(when, dt.datetime):
        return when.astimezone(dt.UTC)
    return dt.datetime.fromtimestamp(when, dt.UTC)


def run_name(kind: str, arch: str | None, instrument: str | None, data_range: str | None,
             started: float | dt.datetime | None = None) -> str:
    """What tells runs apart in MLflow's list, for every run this package creates:
    `final tcn_lstm BTCUSDT 2025-03-10..2025-03-12 03-14 10:41` (kind, architecture, instrument(s),
    first..last labelled day, the UTC month-day and minute the work `started`, a Unix time or a
    datetime; now when None). Empty parts are left out."""
    when = _utc(started).strftime("%m-%d %H:%M")
    return " ".join(str(part) for part in (kind, arch, instrument, data_range, when) if part)


def dagster_tags(dagster_run_id: str | None) -> dict[str, str]:
    """`dagster_run_id` and `dagster_run_url` for a run launched by Dagster ({} without an id).
    The URL is `$DAGSTER_WEBSERVER_URL/runs/<id>`, `http://127.0.0.1:3000/runs/<id>` (the
    address of `dagster dev`) when that variable is unset; a password in it is masked."""
    if not dagster_run_id:
        return {}
    base = redact_url((os.environ.get(DAGSTER_URL_ENV) or DAGSTER_URL_DEFAULT).rstrip("/"))
    return {"dagster_run_id": dagster_run_id, "dagster_run_url": f"{base}/runs/{dagster_run_id}"}


def _finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            out[key] = value
    return out


def _param_value(value: Any) -> Any:
    if isinstance(value, (list, tuple, dict)):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def setup_mlflow(
    tracking_uri: str,
    experiment: str,
    artifact_location: str | Path | None = None,
) -> str:
    """Points MLflow (tracking and registry) at `tracking_uri`, creates `experiment` when missing
    (its artifacts under `artifact_location`, default: `mlartifacts/` beside a SQLite file) and
    makes it the active one. Returns the experiment id. An error quoting the URI's password is
    re-raised with it masked."""
    # no network calls from a local store (MLflow 3 sends usage telemetry unless told not to)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    redact_library_logs()
    if url_secrets(tracking_uri):  # MLflow prints "View run at <tracking URI>/#/..." to stdout
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    with redacted_errors(tracking_uri):
        return _setup_mlflow(tracking_uri, experiment, artifact_location)


def _setup_mlflow(tracking_uri: str, experiment: str, artifact_location: str | Path | None) -> str:
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
    else:
        db_path = sqlite_file(tracking_uri)
        if artifact_location is None and db_path is not None:
            artifact_location = db_path.resolve().parent / "mlartifacts"
        location = None
        if artifact_location is not None:
            path = Path(artifact_location)
            path.mkdir(parents=True, exist_ok=True)
            location = path.resolve().as_uri()
        try:
            experiment_id = client.create_experiment(experiment, artifact_location=location)
        except MlflowException:  # created meanwhile by a parallel worker
            created = client.get_experiment_by_name(experiment)
            if created is None:  # not a race after all: the create failed for another reason
                raise
            experiment_id = created.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


# ---------------------------------------------------------------------------------------------
# Optuna studies


def study_parent_run(tracking_uri: str, experiment: str, study_name: str) -> str | None:
    """The id of the study's parent run, or None (none yet, or the store unreachable)."""
    try:
        client = MlflowClient(tracking_uri=tracking_uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            return None
        runs = client.search_runs([found.experiment_id], max_results=1,
                                  filter_string=f"tags.optuna_study = '{study_name}' and tags.run_kind = 'study'")
        return runs[0].info.run_id if runs else None
    except Exception:  # a link in the metadata, not worth failing for
        return None


class StudyTracker:
    """The MLflow side of one study: `with tracker.study(params):` opens (or re-opens, when the
    study resumes) the parent run; `with tracker.trial(number, params):` a nested run inside it;
    `log_epoch` writes per-epoch metrics to the current trial run. Both are opened before their
    work and named by `run_name` (`arch`: what the search may choose; a trial's own `arch` param
    wins); `dagster_run_id` tags both (`dagster_tags`), a resumed parent with the latest."""

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        study_name: str,
        artifact_location: str | Path | None = None,
        *,
        arch: str = "",
        instrument: str = "",
        data_range: str = "",
        dagster_run_id: str | None = None,
    ):
        self.tracking_uri = tracking_uri
        self.study_name = study_name
        self.arch, self.instrument, self.data_range = arch, instrument, data_range
        self.tags = {**({"instrument": instrument} if instrument else {}),
                     **({"data_range": data_range} if data_range else {}), **dagster_tags(dagster_run_id)}
        self.experiment_id = setup_mlflow(tracking_uri, experiment, artifact_location)
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.parent_run_id: str | None = None
        self.trial_run_id: str | None = None

    def _existing_parent(self) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.optuna_study = '{self.study_name}' and tags.run_kind = 'study'",
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    @contextlib.contextmanager
    def study(self, params: Mapping[str, Any] | None = None) -> Iterator[str]:
        existing = self._existing_parent()
        if existing:
            run = mlflow.start_run(run_id=existing, tags=self.tags or None)
        else:
            run = mlflow.start_run(
                run_name=run_name("study", self.arch, self.instrument, self.data_range),
                tags={"optuna_study": self.study_name, "run_kind": "study", **self.tags},
            )
        self.parent_run_id = run.info.run_id
        try:
            if params and not existing:
                mlflow.log_params({k: _param_value(v) for k, v in params.items()})
            yield self.parent_run_id
            mlflow.end_run("FINISHED")
        except BaseException:
            mlflow.end_run("FAILED")
            raise

    @contextlib.contextmanager
    def trial(self, number: int, params: Mapping[str, Any]) -> Iterator[str]:
        run = mlflow.start_run(
            run_name=run_name(f"trial {number}", params.get("arch") or self.arch, self.instrument, self.data_range),
            nested=True,
            parent_run_id=self.parent_run_id,
            tags={"optuna_study": self.study_name, "run_kind": "trial", "optuna_trial": str(number), **self.tags},
        )
        self.trial_run_id = run.info.run_id
        status = "FINISHED"
        try:
            mlflow.log_params({k: _param_value(v) for k, v in params.items()})
            yield self.trial_run_id
        except BaseException as exc:  # TrialPruned included: the run says how the trial ended
            status = "KILLED" if type(exc).__name__ == "TrialPruned" else "FAILED"
            mlflow.set_tag("optuna_state", "PRUNED" if status == "KILLED" else "FAIL")
            raise
        finally:
            mlflow.end_run(status)
            self.trial_run_id = None

    def log_epoch(self, metrics: Mapping[str, Any], step: int) -> None:
        mlflow.log_metrics(_finite(metrics), step=step)

    def log_trial_value(self, value: float, metric: str = "f1_macro", fold_scores: Sequence[float] = ()) -> None:
        """The trial's objective (`objective_<metric>`: the mean over the folds) and each fold's score."""
        mlflow.set_tag("optuna_state", "COMPLETE")
        mlflow.log_metric(f"objective_{metric}", float(value))
        for k, score in enumerate(fold_scores, start=1):
            mlflow.log_metric(f"fold_{k}_{metric}", float(score))

    def log_best(self, best_params: Mapping[str, Any], best_value: float, n_trials: int) -> None:
        if self.parent_run_id is None:
            return
        self.client.log_metric(self.parent_run_id, "best_objective", float(best_value))
        self.client.log_metric(self.parent_run_id, "n_trials", float(n_trials))
        self.client.log_dict(self.parent_run_id, dict(best_params), "best_params.json")


# ---------------------------------------------------------------------------------------------
# The final model


def current_champion(client: MlflowClient, name: str, alias: str = CHAMPION,
                     metric: str = CHAMPION_METRIC) -> tuple[str | None, float | None]:
    """(version, its `metric` tag or run metric) of the model version holding `alias`, or (None, None)."""
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None, None
    value: str | float | None = version.tags.get(metric) if version.tags else None  # a tag is text, a metric a float
    if value is None and version.run_id:
        value = client.get_run(version.run_id).data.metrics.get(metric)
    return version.version, (float(value) if value is not None else None)


def _champion_test_score(client: MlflowClient, name: str, alias: str = CHAMPION) -> float | None:
    """The holder's test F1 macro: reported next to a new model's, never compared."""
    try:
        version = client.get_model_version_by_alias(name, alias)
        return client.get_run(version.run_id).data.metrics.get("test_f1_macro") if version.run_id else None
    except MlflowException:
        return None


@dataclass
class Promotion:
    promoted: bool
    reason: str
    previous_score: float | None
    previous_test_f1_macro: float | None = None


def _holder_range(client: MlflowClient, name: str, version: str | None) -> str | None:
    if version is None:
        return None
    tags = client.get_model_version(name, version).tags or {}
    return tags.get("data_range")


def promote_if_better(
    client: MlflowClient,
    name: str,
    version: str | int,
    score: float,
    alias: str = CHAMPION,
    metric: str = CHAMPION_METRIC,
    eligible: bool = True,
    not_eligible_reason: str = "",
    direction: str = "maximize",
    data_range: str | None = None,
) -> Promotion:
    """Moves `alias` to `version` when it is `eligible` (beats the baselines on walk-forward) and
    it beats the holder: on the same `data_range` ("first..last day") by its walk-forward `score`;
    on another range only when its data ends later (walk-forward scores of different periods are
    not comparable: an easier period would win). The runs' `champion` tags follow the alias, so
    exactly one run carries `champion=true`."""
    client.set_model_version_tag(name, str(version), metric, str(float(score)))
    if data_range:
        client.set_model_version_tag(name, str(version), "data_range", data_range)
    holder, previous = current_champion(client, name, alias, metric)
    previous_test = _champion_test_score(client, name, alias)
    if not eligible:
        return Promotion(False, not_eligible_reason or "not eligible", previous, previous_test)
    holder_range = _holder_range(client, name, holder)
    if holder is None:
        reason = f"{metric} {score:.4f} beats persistence and logistic (first champion)"
    elif previous is None:
        reason = f"{metric} {score:.4f} beats persistence and logistic; the champion v{holder} recorded no {metric}"
    elif data_range and holder_range and holder_range != data_range:
        if data_range.split("..")[-1] <= holder_range.split("..")[-1]:
            return Promotion(False, f"the champion v{holder} was judged on {holder_range}, this run on {data_range}: "
                                    "an older or equal range never displaces it", previous, previous_test)
        reason = f"{metric} {score:.4f} beats persistence and logistic on newer data ({data_range}, the champion " \
                 f"v{holder}: {holder_range})"
    else:
        better = score < previous if direction == "minimize" else score > previous
        if not better:
            return Promotion(False, f"{metric} {score:.4f} does not beat the champion's {previous:.4f} "
                                    f"(v{holder})", previous, previous_test)
        reason = f"{metric} {score:.4f} beats persistence, logistic and the champion's {previous:.4f} (v{holder})"
    if holder is not None:
        _untag_run_of(client, name, holder)
    client.set_registered_model_alias(name, alias, str(version))
    return Promotion(True, reason, previous, previous_test)


def _untag_run_of(client: MlflowClient, name: str, version: str) -> None:
    """The run of the version losing the alias no longer says `champion=true`."""
    try:
        run_id = client.get_model_version(name, version).run_id
        if run_id:
            client.set_tag(run_id, "champion", "false")
    except MlflowException:
        pass  # a deleted run: nothing to untag


@dataclass
class FinalRun:
    run_id: str
    model_uri: str | None
    registered_version: str | None
    promoted: bool
    previous_champion_score: float | None
    reason: str = ""
    previous_champion_test_f1_macro: float | None = None


def _history_dicts(history: Sequence[Any]) -> list[dict[str, float]]:
    out = []
    for item in history:
        if hasattr(item, "as_mlflow"):
            row = item.as_mlflow()
            row["epoch"] = item.epoch
        else:
            row = dict(item)
        out.append(row)
    return out


def _log_pytorch_model(model: Any, name: str, input_example: np.ndarray, registered_model_name: str | None):
    import torch
    from mlflow.models import infer_signature

    from .models import plain_copy

    export = plain_copy(model).to("cpu") if hasattr(model, "spec") else model.to("cpu").eval()
    example = np.asarray(input_example, dtype=np.float32)
    if example.shape[0] < 2:
        # with one row, torch.export specialises the batch dimension to 1
        example = np.concatenate([example, example], axis=0)
    with torch.no_grad():
        output = export(torch.from_numpy(example)).numpy()
    signature = infer_signature(example, output)
    requirements = [f"torch=={torch.__version__.split('+')[0]}"]
    with warnings.catch_warnings():
        # torch.export notes that nn.LSTM's flat weight list is not a registered buffer: harmless
        warnings.filterwarnings("ignore", message=r"The tensor attributes .*_flat_weights")
        return _log_with_fallback(export, name, signature, example, registered_model_name, requirements)


def _log_with_fallback(export, name, signature, example, registered_model_name, requirements):
    import mlflow.pytorch

    try:
        return mlflow.pytorch.log_model(
            export, name=name, signature=signature, input_example=example,
            registered_model_name=registered_model_name, pip_requirements=requirements,
        )
    except Exception:  # torch.export cannot trace every model; pickle can
        return mlflow.pytorch.log_model(
            export, name=name, signature=signature, input_example=example,
            registered_model_name=registered_model_name, pip_requirements=requirements,
            serialization_format="pickle",
        )


def log_final_model(
    model: Any,
    *,
    params: Mapping[str, Any],
    history: Sequence[Any],
    test_metrics: Mapping[str, Any],
    confusion: Any,
    input_example: np.ndarray,
    tracking_uri: str,
    experiment: str,
    run_name: str = "final_model",
    registered_model_name: str | None = None,
    alias: str = CHAMPION,
    artifact_location: str | Path | None = None,
    artifacts: Sequence[str | Path] = (),
    extra_metrics: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    champion_score: float | None = None,
    champion_metric: str = CHAMPION_METRIC,
    eligible: bool = True,
    not_eligible_reason: str = "",
    direction: str = "maximize",
    texts: Mapping[str, str] | None = None,
    data_range: str | None = None,
    bundle: str | Path | None = None,
    started_at: float | None = None,
    summary: Mapping[str, Any] | None = None,
) -> FinalRun:
    """One run for the final model: params, per-epoch metrics (`EpochMetrics` or dicts with an
    "epoch"), test metrics (logged as `test_<key>`), `extra_metrics` as given (baselines,
    backtest), the confusion matrix image, `artifacts` (e.g. the .pth bundle), `texts` (name ->
    text, e.g. the model card), the model with signature and input example, registered as
    `registered_model_name`; `alias` moves to the new version only when it is `eligible` and its
    `champion_score` (walk-forward, tagged `champion_metric`) beats the holder's. Without a
    `champion_score` nothing is promoted. With `bundle` (the .pth file), the registered `model` is
    the pyfunc that takes raw book rows (`pyfunc.BookModel`) and the bare torch module is logged
    beside it as `torch_model`; without, the torch module is the registered `model`.
    `started_at` (a Unix time, default now) is the run's start: when the work it records began,
    before training, so that the run's duration is the work's. `summary` (`headline`) is logged
    as `summary.json` and `summary.md`, the champion decision added. The tracking URI is never
    logged as a param or tag; an error quoting its password is re-raised masked."""
    with redacted_errors(tracking_uri):  # an MLflow error quoting the URI, masked
        experiment_id = setup_mlflow(tracking_uri, experiment, artifact_location)
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        run_tags = {"run_kind": "final_model", **{k: str(v) for k, v in (tags or {}).items()}}
        from mlflow.tracking.context.registry import resolve_tags  # what mlflow.start_run adds (user, source)

        created = client.create_run(experiment_id, start_time=None if started_at is None else int(1000 * started_at),
                                    tags=resolve_tags(run_tags), run_name=run_name)
        with mlflow.start_run(run_id=created.info.run_id) as run:
            mlflow.log_params({k: _param_value(v) for k, v in params.items()})
            for row in _history_dicts(history):
                step = int(row.pop("epoch", 0))
                mlflow.log_metrics(_finite(row), step=step)
            test = {k if k.startswith("test_") else f"test_{k}": v for k, v in test_metrics.items()}
            mlflow.log_metrics(_finite(test))
            if extra_metrics:
                mlflow.log_metrics(_finite(extra_metrics))
            fig = confusion_figure(confusion)
            mlflow.log_figure(fig, "confusion_matrix.png")
            mlflow.log_dict({"confusion": np.asarray(confusion).tolist(), "classes": list(CLASS_NAMES)},
                            "confusion_matrix.json")
            for path in artifacts:
                mlflow.log_artifact(str(path))
            for name, text in (texts or {}).items():
                mlflow.log_text(text, name)
            if bundle is not None:
                from .pyfunc import log_book_model

                _log_pytorch_model(model, "torch_model", input_example, None)
                info = log_book_model(bundle, "model", registered_model_name)
            else:
                info = _log_pytorch_model(model, "model", input_example, registered_model_name)
            version = getattr(info, "registered_model_version", None)
            promotion = Promotion(False, "no walk-forward score to compare", None)
            if registered_model_name and version is not None and champion_score is not None:
                promotion = promote_if_better(client, registered_model_name, version, float(champion_score), alias,
                                              champion_metric, eligible, not_eligible_reason, direction, data_range)
            mlflow.set_tag("champion", str(promotion.promoted).lower())
            mlflow.set_tag("champion_reason", promotion.reason)
            if summary is not None:
                decided = {**summary, "champion": promotion.promoted, "champion_reason": promotion.reason}
                mlflow.log_dict(decided, "summary.json")
                mlflow.log_text(summary_markdown(decided), "summary.md")
            return FinalRun(run.info.run_id, info.model_uri, str(version) if version is not None else None,
                            promotion.promoted, promotion.previous_score, promotion.reason,
                            promotion.previous_test_f1_macro)


def _final_metrics(final: FinalModel) -> dict[str, Any]:
    """Everything but the per-epoch and test scores: walk-forward, intervals, baselines, backtests, sizes."""
    out: dict[str, Any] = {"best_val_f1_macro": final.best_val_f1_macro, "best_epoch": final.best_epoch,
                           "n_parameters": final.n_parameters}
    wf, report = final.walk_forward, final.report
    if wf is not None:
        out[f"walk_forward_{wf.metric}"] = wf.model_mean
        for f in wf.folds:
            out[f"fold_{f.fold}_{wf.metric}"] = f.model
        for name, mean in wf.baseline_means.items():
            out[f"walk_forward_{name}_{wf.metric}"] = mean
    if report is not None:
        out.update(test_f1_macro_low=report.interval.low, test_f1_macro_high=report.interval.high)
        for name, edge in report.edges.items():
            out.update({f"edge_{name}_f1_macro": edge.estimate, f"edge_{name}_low": edge.low,
                        f"edge_{name}_high": edge.high})
        for key, (mean, std) in report.seeds.items():
            if len(final.seeds) > 1:
                out.update({f"seeds_test_{key}_mean": mean, f"seeds_test_{key}_std": std})
    for name, base in final.baselines.items():
        for key in ("f1_macro", "f1_weighted", "f1_sell", "f1_neutral", "f1_buy"):
            out[f"baseline_{name}_{key}"] = base[key]
    for name, bt in final.backtests.items():
        prefix = "backtest" if name == "model" else f"backtest_{name}"
        for key in ("net_return", "net_return_low", "net_return_high", "gross_return", "hit_rate", "sharpe",
                    "n_trades", "max_drawdown"):
            out[f"{prefix}_{key}"] = bt.get(key)
    for key, per in final.backtests_by_instrument.items():  # several instruments: each one's test block
        for name, bt in per.items():
            prefix = f"backtest_{key}" if name == "model" else f"backtest_{name}_{key}"
            for metric in ("net_return", "net_return_low", "net_return_high", "n_trades"):
                out[f"{prefix}_{metric}"] = bt.get(metric)
    for part, size in final.sizes.items():
        out[f"n_{part}_windows"] = size
    for part, priors in final.priors.items():
        for cls, p in zip(("sell", "neutral", "buy"), priors):
            out[f"prior_{part}_{cls}"] = p
    return out


def _signed_pct(value: Any) -> str:
    """`+1.23 %`, or `–` for a missing or non-finite value."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "–"
    return f"{100 * value:+.2f} %" if math.isfinite(value) else "–"


def headline(final: FinalModel) -> dict[str, Any]:
    """The few numbers that matter, as plain values and as text: test macro-F1 with its interval,
    each baseline's test macro-F1 (and model − it, with its interval and verdict), the verdict,
    the backtest's net return with its interval, the walk-forward score that decides promotion."""
    report, wf = final.report, final.walk_forward
    out: dict[str, Any] = {"arch": final.params.get("arch"), "data_range": f"{final.days[0]}..{final.days[-1]}",
                           "test_period": list(final.test_period), "verdict": final.verdict}
    if report is not None:
        iv = report.interval
        out["test_f1_macro"] = {"estimate": iv.estimate, "low": iv.low, "high": iv.high, "text": iv.format(),
                                "confidence": iv.confidence}
    else:
        out["test_f1_macro"] = {"estimate": final.test.get("f1_macro"), "text": f"{final.test.get('f1_macro', 0):.3f}"}
    baselines = {}
    for name, base in final.baselines.items():
        row: dict[str, Any] = {"test_f1_macro": base.get("f1_macro"), "text": f"{base.get('f1_macro', 0):.3f}"}
        if report is not None and name in report.edges:
            row.update(edge=report.edges[name].format(signed=True), verdict=report.verdicts.get(name, ""))
        baselines[name] = row
    out["baselines"] = baselines
    bt = final.backtests.get("model")
    if bt is not None:
        text = f"{_signed_pct(bt.get('net_return'))} [{_signed_pct(bt.get('net_return_low'))}, " \
               f"{_signed_pct(bt.get('net_return_high'))}] ({bt.get('n_trades')} trades" \
               + (f", {bt['instrument']} only)" if bt.get("instrument") else ")")
        out["backtest_net_return"] = {"estimate": bt.get("net_return"), "low": bt.get("net_return_low"),
                                      "high": bt.get("net_return_high"), "n_trades": bt.get("n_trades"), "text": text}
    if wf is not None:
        out[f"walk_forward_{wf.metric}"] = {"model": wf.model_mean, **wf.baseline_means,
                                            "promotable": wf.promotable}
    return json.loads(json.dumps(out, default=_plain))  # numpy scalars as plain numbers


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def headline_tags(summary: Mapping[str, Any]) -> dict[str, str]:
    """The headline as run tags (MLflow's run table and comparison view show tags as columns):
    `test_f1_macro` `0.412 [0.351, 0.470]`, `baseline_<name>` `0.380`, `verdict`,
    `backtest_net_return` `+1.23 % [-0.50 %, +2.90 %] (42 trades)`."""
    tags = {"test_f1_macro": summary["test_f1_macro"]["text"], "verdict": summary["verdict"]}
    for name, row in summary["baselines"].items():
        tags[f"baseline_{name}"] = row["text"]
    if "backtest_net_return" in summary:
        tags["backtest_net_return"] = summary["backtest_net_return"]["text"]
    return tags


def summary_markdown(summary: Mapping[str, Any]) -> str:
    """`summary.md`: the headline as one small table and a few lines."""
    lines = [f"# {summary.get('run_name') or 'Final model'}", ""]
    lines.append(f"**Verdict: {summary['verdict'] or 'n/a'}**")
    lines += ["", "| test block | F1 macro | model − this | verdict |", "|---|---:|---:|---|",
              f"| **model** | **{summary['test_f1_macro']['text']}** | | |"]
    for name, row in summary["baselines"].items():
        lines.append(f"| {name} | {row['text']} | {row.get('edge', '')} | {row.get('verdict', '')} |")
    lines.append("")
    period = summary.get("test_period") or ["", ""]
    lines.append(f"- Test period: {period[0]} .. {period[1]} UTC (scored once); data {summary.get('data_range')}")
    if "backtest_net_return" in summary:
        lines.append(f"- Backtest net return: {summary['backtest_net_return']['text']}")
    for key, value in summary.items():
        if key.startswith("walk_forward_") and isinstance(value, Mapping):
            others = ", ".join(f"{k} {v:.4f}" for k, v in value.items()
                               if k not in ("model", "promotable") and isinstance(v, (int, float)))
            lines.append(f"- Walk-forward {key.removeprefix('walk_forward_')}: model {value['model']:.4f} "
                         f"({others}); {'promotable' if value.get('promotable') else 'not promotable'}")
    if "champion" in summary:
        lines.append(f"- Champion: {'yes' if summary['champion'] else 'no'}: {summary.get('champion_reason', '')}")
    if summary.get("dagster_run_url"):
        lines.append(f"- Dagster run: {summary['dagster_run_url']}")
    return "\n".join(lines) + "\n"


def log_final_run(settings: Settings, final: FinalModel, model: Any, data: PreparedData,
                  run_tags: Mapping[str, Any] | None, *, started_at: float | None = None,
                  dagster_run_id: str | None = None) -> None:
    """The `model` asset's MLflow run (training.yaml `mlflow:`): params, per-epoch, walk-forward and
    test metrics with intervals, baselines and backtests, the verdicts, the headline (tags,
    summary.md / summary.json), the pictures, the model card and the bundle; promotion by the
    walk-forward rule; fills `final`'s run fields. `started_at` (Unix time): when the work began,
    the run's start; `dagster_run_id`: the Dagster run that launched it (`dagster_tags`)."""
    from .features import FEATURE_CODE_HASH
    from .provenance import git_commit

    tr, lab, opt = settings.training, settings.labelling, settings.optimization
    test = {k: v for k, v in final.test.items() if k != "confusion"}
    params = {**final.params, "params_source": final.params_source, "label_suffix": lab.suffix,
              "lookahead": lab.lookahead, "n_features": data.n_features,
              "data_start": data.labelled.start.isoformat(), "data_end": data.labelled.end.isoformat(),
              "n_days": len(data.labelled.days), "fee": tr.backtest.fee, "slippage_bps": tr.backtest.slippage_bps,
              "metric": opt.metric, "folds": len(data.folds), "seeds": len(final.seeds), "kept_seed": final.kept_seed,
              "test_start": final.test_period[0], "test_end": final.test_period[1],
              "bootstrap_block": final.report.block if final.report else None}
    final_name = run_name("final", final.params.get("arch"), instrument_label(settings),
                          f"{data.labelled.start}..{data.labelled.end}", started_at)
    links = dagster_tags(dagster_run_id)
    summary = {"run_name": final_name, "instrument": instrument_label(settings), **headline(final), **links}
    tags = {"label_suffix": lab.suffix, "git_commit": git_commit(), "feature_hash": FEATURE_CODE_HASH,
            "instrument": instrument_label(settings), "data_range": f"{data.labelled.start}..{data.labelled.end}",
            "test_period": f"{final.test_period[0]}..{final.test_period[1]}", **headline_tags(summary),
            **({f"verdict_{k}": v for k, v in final.report.verdicts.items()} if final.report else {}),
            **links, **(run_tags or {})}
    texts = {"model_card.md": final.card} if final.card else {}
    if final.walk_forward is not None:
        texts["walk_forward.json"] = json.dumps(final.walk_forward.summary(), indent=2)
    wf = final.walk_forward
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
            input_example=_input_example(data), tracking_uri=tr.mlflow.tracking_uri,
            experiment=tr.mlflow.experiment, run_name=final_name,
            registered_model_name=tr.mlflow.registered_model, artifacts=[final.model_path, *pictures],
            extra_metrics=_final_metrics(final), tags=tags, texts=texts,
            champion_score=wf.model_mean if wf else None,
            champion_metric=f"walk_forward_{wf.metric}" if wf else CHAMPION_METRIC,
            eligible=bool(wf and wf.promotable), not_eligible_reason=(wf.why_not() or "") if wf else "",
            direction=opt.goal if wf and wf.metric == opt.metric else "maximize",
            data_range=f"{data.labelled.start}..{data.labelled.end}", bundle=final.model_path,
            started_at=started_at, summary=summary,
        )
    final.mlflow_run_id = run.run_id
    final.mlflow_model_uri = run.model_uri
    final.registered_version = run.registered_version
    final.promoted = run.promoted
    final.promotion = run.reason
    final.previous_champion = run.previous_champion_score
    final.champion_test_f1_macro = run.previous_champion_test_f1_macro


def _input_example(data: PreparedData) -> np.ndarray:
    """Two scaled test windows (float32 [2, seq_len, F]): the model's input example."""
    ends = data.split.test[:2] if data.split.test.size >= 2 else data.split.val[:2]
    offsets = np.arange(-data.seq_len + 1, 1)
    return data.scaler.transform(data.features[ends[:, None] + offsets])
