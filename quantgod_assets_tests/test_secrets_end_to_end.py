"""Secrets never leave the process, end to end: the `optimization` and `model` assets run
in-process (the small profile, generated labelled days, a Dagster instance on disk) with a password
planted in QUANTGOD_OPTUNA_STORAGE and QUANTGOD_MLFLOW_URI, then every output is searched for it:
each file under the test's folder (logs/, the Dagster instance's event-log and run databases,
the MLflow database and artifacts, the Optuna database, best_params.json), the run's event records
(metadata included) as Dagster serializes them, MLflow's params and tags, and stdout / stderr.

The planted URLs work locally: SQLite URIs (`sqlite:///file:/abs/path.db?mode=rwc&password=...&uri=true`)
whose `password` SQLite ignores, so Optuna and MLflow really connect through the URL that holds it.
The failure case points MLflow at `http://user:<password>@127.0.0.1:1`: the connection is refused
and MLflow's error quotes the URL; the run must fail with the password masked.
"""

import datetime as dt
import os
from pathlib import Path

import dagster as dg
import pytest
import yaml

from quantgod_assets.assets.ml import model, optimization
from quantgod_assets.labelling import label_day_files
from quantgod_assets.secrets import MASK

from .builders import QuantGodEnv, make_env, materialize, write_pre_days

PLANTED = "Pl4ntedS3cret"  # in no file the repository or its libraries ship
SUFFIX = "SELL_0004_BUY_0008_1h"
DAYS = [dt.date(2025, 3, 10) + dt.timedelta(days=k) for k in range(3)]


def _label_days(env: QuantGodEnv) -> None:
    pre = env.preprocessed_dir()
    write_pre_days(pre, DAYS)
    for day in DAYS:
        label_day_files(pre, env.labelled_dir(), day)


def _lighter_small_profile(env: QuantGodEnv) -> None:
    """The small profile made lighter still (as test_assets_ml.py does): fewer batches, tiny channels."""
    for name, changes in {
        "optimization.yaml": {"max_batches_per_epoch": 6},
        "training.yaml": {"max_batches_per_epoch": 8, "tcn_channels": 8, "lstm_hidden": 8},
    }.items():
        path = env.config_dir / name
        data = yaml.safe_load(path.read_text())
        data["profiles"]["small"].update(changes)
        path.write_text(yaml.safe_dump(data, sort_keys=False))


def _failure_text(result: dg.ExecuteInProcessResult) -> str:
    failures = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    return "\n".join(str(e.step_failure_data.error) for e in failures)


def _sqlite_uri(path: Path, password: str) -> str:
    """A SQLite URL carrying a password, that Optuna (SQLAlchemy) and MLflow open as is."""
    return f"sqlite:///file:{path}?mode=rwc&password={password}&uri=true"


@pytest.fixture
def secret_env(tmp_path, monkeypatch) -> QuantGodEnv:
    env = make_env(tmp_path / "qg", {})
    for key, value in env.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("QUANTGOD_ML_PROFILE", "small")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("QUANTGOD_OPTUNA_STORAGE", _sqlite_uri(tmp_path / "qg" / "optuna_study.db", PLANTED + "opt"))
    monkeypatch.setenv("QUANTGOD_MLFLOW_URI", _sqlite_uri(tmp_path / "qg" / "mlflow.db", PLANTED + "mlf"))
    monkeypatch.chdir(tmp_path)  # whatever a library writes beside the working directory is searched too
    _lighter_small_profile(env)
    _label_days(env)
    yield env
    import mlflow

    while mlflow.active_run():
        mlflow.end_run()


def _files_holding(folder: Path, secret: str) -> list[str]:
    """Every file under `folder` whose bytes hold `secret` (as written, or UTF-16 as SQLite may)."""
    forms = [secret.encode(), secret.encode("utf-16-le")]
    found = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if any(form in data for form in forms):
                found.append(str(path.relative_to(folder)))
    return found


def _event_records_holding(instance: dg.DagsterInstance, secret: str) -> list[str]:
    """The run's event records (messages, metadata, errors) that hold `secret`, as Dagster stores them."""
    from dagster._serdes import serialize_value

    found = []
    for run in instance.get_runs():
        for entry in instance.all_logs(run.run_id):
            text = serialize_value(entry)
            if secret in text:
                found.append(f"{entry.dagster_event_type or 'log'}: {entry.user_message[:200]}")
    return found


def _every_output_clean(root: Path, instance: dg.DagsterInstance, captured: str) -> None:
    files = _files_holding(root, PLANTED)
    records = _event_records_holding(instance, PLANTED)
    assert not files, f"the planted password is written in {files}"
    assert not records, f"the planted password is in the event log: {records}"
    assert PLANTED not in captured, "the planted password went to stdout / stderr"


def test_a_planted_password_reaches_no_output_of_a_successful_search_and_model(secret_env, tmp_path, capfd):
    from mlflow import MlflowClient

    storage = os.environ["QUANTGOD_OPTUNA_STORAGE"]
    tracking = os.environ["QUANTGOD_MLFLOW_URI"]
    with dg.DagsterInstance.from_config(str(secret_env.dagster_home)) as instance:
        for asset in (optimization, model):
            result = materialize([asset], instance=instance)
            assert result.success, _failure_text(result)
        captured = capfd.readouterr()
        _every_output_clean(tmp_path, instance, captured.out + captured.err)

        # the stages really used the URLs holding the password: the study and the runs are there
        import optuna

        opt_meta = instance.get_latest_materialization_event(dg.AssetKey("optimization")).asset_materialization.metadata
        study = optuna.load_study(study_name=opt_meta["study_name"].value, storage=storage)
        assert len(study.trials) == 2
        client = MlflowClient(tracking_uri=tracking)
        runs = [run for name in ("quantgod-optimization", "quantgod")
                for exp in [client.get_experiment_by_name(name)] if exp is not None
                for run in client.search_runs([exp.experiment_id])]
        assert {r.data.tags.get("run_kind") for r in runs} == {"study", "trial", "final_model"}, runs

        # ... and every place that shows them shows them masked
        masked_storage = storage.replace(PLANTED + "opt", MASK)
        assert opt_meta["storage"].value == masked_storage
        assert opt_meta["dashboard"].value == f"`optuna-dashboard {masked_storage}`"
        model_meta = instance.get_latest_materialization_event(dg.AssetKey("model")).asset_materialization.metadata
        assert model_meta["mlflow_tracking_uri"].value == tracking.replace(PLANTED + "mlf", MASK)
        study_run = next(r for r in runs if r.data.tags.get("run_kind") == "study")
        assert study_run.data.params["storage_url"] == masked_storage
        best = (secret_env.data_dir / "optimization" / "BTCUSDT_linear" / "best_params.json").read_text()
        assert f'"storage_url": "{masked_storage}"' in best
        log_text = next((secret_env.logs_dir / "optimization").iterdir()).read_text()
        assert f"at {masked_storage} | labels" in log_text

        for run in runs:  # MLflow as its API gives it back (the database is searched below too)
            shown = repr(run.data.params) + repr(run.data.tags) + repr(run.info)
            assert PLANTED not in shown, run.info.run_name


def test_a_failed_connection_fails_the_run_with_the_password_masked(secret_env, tmp_path, capfd, monkeypatch):
    # nothing listens on port 1: MLflow's "API request to http://user:...@127.0.0.1:1/... failed"
    monkeypatch.setenv("QUANTGOD_MLFLOW_URI", f"http://quantgod:{PLANTED}@127.0.0.1:1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with dg.DagsterInstance.from_config(str(secret_env.dagster_home)) as instance:
        result = materialize([optimization], instance=instance)
        assert not result.success
        captured = capfd.readouterr()
        _every_output_clean(tmp_path, instance, captured.out + captured.err)
        text = _failure_text(result)
        assert f"quantgod:{MASK}@127.0.0.1:1" in text and "RedactedError" in text, text
