"""The ML assets: `optimization` and `model` in-process on a few labelled days, and `model` through
the real CLI. Small settings (QUANTGOD_ML_PROFILE=small: 2 trials x 2 epochs, seq_len 30, 10
levels), a lighter model and a batch cap so the whole file runs in about a minute on a CPU.

Labelled days: preprocessed frames from `make_day_frame` (a random walk on 10 filled levels)
labelled by `labelling.label_day_files` with the default labels (H = 60 min, -0.4 % / +0.8 %).
"""

import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
import yaml

from quantgod_assets.assets.ml import model, optimization
from quantgod_assets.labelling import label_day_files

from .builders import QuantGodEnv, make_env, materialize, write_pre_days

SUFFIX = "SELL_0004_BUY_0008_1h"
START = dt.date(2025, 3, 10)
DAYS = [START + dt.timedelta(days=k) for k in range(3)]
OPT_LOG = re.compile(rf"^optimization_{SUFFIX}_BTCUSDT_linear_\d{{8}}_\d{{6}}\.log$")
TRAIN_LOG = re.compile(r"^training_BTCUSDT_linear_\d{8}_\d{6}\.log$")


def _label_days(env: QuantGodEnv, days) -> None:
    pre = env.preprocessed_dir()
    write_pre_days(pre, days)
    for day in days:
        label_day_files(pre, env.labelled_dir(), day)


def _small_overrides(env: QuantGodEnv, *, absolute_stores: bool = True) -> None:
    """The small profile made lighter still for tests: fewer batches, tiny channels."""
    for name, changes in {
        "optimization.yaml": {"profiles": {"small": {"max_batches_per_epoch": 6}}},
        "training.yaml": {"profiles": {"small": {"max_batches_per_epoch": 8, "tcn_channels": 8,
                                                 "lstm_hidden": 8}}},
    }.items():
        path = env.config_dir / name
        data = yaml.safe_load(path.read_text())
        for section, values in changes["profiles"].items():
            data["profiles"][section].update(values)
        if absolute_stores and name == "optimization.yaml":
            data["storage"] = f"sqlite:///{env.root / 'optuna_study.db'}"
        if absolute_stores and name == "training.yaml":
            data["mlflow"]["tracking_uri"] = f"sqlite:///{env.root / 'mlflow.db'}"
        path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture
def ml_env(tmp_path, monkeypatch) -> QuantGodEnv:
    env = make_env(tmp_path, {})
    for key, value in env.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("QUANTGOD_ML_PROFILE", "small")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    _small_overrides(env)
    _label_days(env, DAYS)
    yield env
    import mlflow

    while mlflow.active_run():
        mlflow.end_run()


def _metadata(instance: dg.DagsterInstance, key: str) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey(key))
    return event.asset_materialization.metadata


def _failure_text(result: dg.ExecuteInProcessResult) -> str:
    failures = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    return "\n".join(str(e.step_failure_data.error) + str(e.step_failure_data.user_failure_data) for e in failures)


def test_optimization_then_model_in_process(ml_env):
    import optuna
    import torch
    from mlflow import MlflowClient

    from quantgod_assets.ml.train import load_model, predict_logits

    instance = dg.DagsterInstance.ephemeral()
    result = materialize([optimization], instance=instance)
    assert result.success, _failure_text(result)

    # the study holds the 2 trials, named after labels, profile, data range and the search
    meta = _metadata(instance, "optimization")
    name = meta["study_name"].value
    assert name.startswith(f"BTCUSDT_linear_{SUFFIX}_small_2025-03-10_2025-03-12_")
    storage = f"sqlite:///{ml_env.root / 'optuna_study.db'}"
    study = optuna.load_study(study_name=name, storage=storage)
    assert len(study.trials) == 2
    # 3 walk-forward folds x 2 epochs, each reported; the value is the mean over the folds
    for t in study.trials:
        if t.state.name == "COMPLETE":
            assert sorted(t.intermediate_values) == [1, 2, 3, 4, 5, 6]
            assert t.value == pytest.approx(np.mean(t.user_attrs["fold_scores"]))
    best_path = ml_env.data_dir / "optimization" / "BTCUSDT_linear" / "best_params.json"
    best = json.loads(best_path.read_text())
    assert best["study_name"] == name and best["best_params"]["seq_len"] == 30
    assert best["best_params"]["n_levels"] == 10 and best["best_params"]["arch"] == "tcn_lstm"
    assert (best["profile"], best["data_start"], best["data_end"]) == ("small", "2025-03-10", "2025-03-12")
    assert len(best["best_fold_scores"]) == 3 and best["feature_hash"] and best["search_hash"]

    logs = list((ml_env.logs_dir / "optimization").iterdir())
    assert len(logs) == 1 and OPT_LOG.match(logs[0].name), logs
    text = logs[0].read_text()
    assert "Trial 0 START | tcn=" in text and "Trial 1 fold 3/3, Epoch 2/2 | f1_macro: " in text
    assert "| F1 [S/N/B]: [" in text and "Best trial " in text and "mean f1_macro over 3 fold(s)" in text
    assert meta["trials_complete"].value + meta["trials_pruned"].value == 2
    assert len(meta["best_fold_scores"].value) == 3
    assert "| trial | state |" in meta["trials"].value

    # MLflow: one parent run per study and a nested run per trial
    uri = f"sqlite:///{ml_env.root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("quantgod-optimization")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("run_kind") == "study"]
    trials = [r for r in runs if r.data.tags.get("run_kind") == "trial"]
    assert len(parents) == 1 and len(trials) == 2
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in trials)
    assert meta["mlflow_parent_run_id"].value == parents[0].info.run_id
    # named after arch(s), instrument, range, start; linked to the Dagster run that made them
    assert parents[0].info.run_name.startswith("study tcn_lstm BTCUSDT_linear 2025-03-10..2025-03-12 ")
    assert all(r.info.run_name.startswith(f"trial {r.data.tags['optuna_trial']} tcn_lstm BTCUSDT_linear ")
               for r in trials)
    assert {r.data.tags["dagster_run_id"] for r in [*parents, *trials]} == {result.run_id}

    # the model: best params used, bundle written, test metrics in MLflow and in the metadata
    result = materialize([model], instance=instance)
    assert result.success, _failure_text(result)
    meta = _metadata(instance, "model")
    assert meta["params_source"].value == str(best_path)
    for key in ("test_vs_baselines", "confusion_matrix", "training_curve", "backtest", "walk_forward", "model_card",
                "verdict", "test_f1_macro_interval", "test_period", "class_priors", "champion_reason"):
        assert key in meta
    table = meta["test_vs_baselines"].value
    for shown in ("**model**", "majority", "stratified", "persistence", "logistic", "edge over persistence: "):
        assert shown in table
    assert meta["verdict"].value.startswith(("edge: ", "no edge: "))
    assert re.fullmatch(r"0\.\d{3} \[0\.\d{3}, 0\.\d{3}\]", meta["test_f1_macro_interval"].value)
    walk = meta["walk_forward"].value
    assert walk.count("\n") == 1 + 3 + 1 and "| **mean** |" in walk  # header, 3 folds, the mean
    card = meta["model_card"].value
    for section in ("## Walk-forward validation", "## Test block (scored once)", "## Backtest", "git "):
        assert section in card
    assert meta["confusion_matrix"].value.startswith("![confusion matrix](data:image/png;base64,")
    assert meta["training_curve"].value.startswith("![training curve](data:image/png;base64,")
    assert meta["backtest_equity"].value.startswith("![backtest equity](data:image/png;base64,")
    assert "annualized Sharpe" in meta["backtest"].value

    logs = list((ml_env.logs_dir / "training").iterdir())
    assert len(logs) == 1 and TRAIN_LOG.match(logs[0].name), logs
    text = logs[0].read_text()
    assert re.search(r"Device: cpu \| Parameters: \d{1,3}(,\d{3})*\n", text)
    assert "Epoch 2/2 | Train Loss: " in text and "✅ Best model saved (val f1_macro: " in text
    assert "Baseline majority" in text and "Backtest at bid/ask (fee 0.055 %/side" in text
    assert "Walk-forward fold 3/3" in text and "Verdict: " in text and "Class priors S/N/B" in text

    run = MlflowClient(tracking_uri=uri).get_run(meta["mlflow_run_id"].value)
    wanted = {"test_f1_macro", "test_f1_macro_low", "test_f1_macro_high", "test_f1_weighted",
              "baseline_majority_f1_macro", "baseline_stratified_f1_macro", "backtest_n_trades",
              "edge_persistence_low", "walk_forward_f1_macro", "fold_3_f1_macro", "backtest_net_return"}
    assert wanted <= set(run.data.metrics)
    assert run.data.params["label_suffix"] == SUFFIX and run.data.params["folds"] == "3"
    assert run.data.tags["verdict"] == meta["verdict"].value and run.data.tags["test_period"]
    artifacts = {a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(run.info.run_id)}
    assert {"model_card.md", "walk_forward.json", "summary.md", "summary.json"} <= artifacts
    # the headline as tags, the Dagster run linked, the name saying what differs
    tags = run.data.tags
    assert tags["test_f1_macro"] == meta["test_f1_macro_interval"].value
    assert {f"baseline_{b}" for b in ("majority", "stratified", "persistence", "logistic")} <= set(tags)
    assert tags["backtest_net_return"].endswith(f"({meta['backtest_trades'].value} trades)")
    assert tags["dagster_run_id"] == result.run_id and tags["dagster_run_url"].endswith(f"/runs/{result.run_id}")
    assert run.info.run_name.startswith("final tcn_lstm BTCUSDT_linear 2025-03-10..2025-03-12 ")

    # the run spans the work: it starts before the final model's first line, ends after the bundle is saved
    def logged_at(marker: str) -> float:  # the log line's local time (whole seconds), in ms
        line = next(line for line in text.splitlines() if marker in line)
        return 1000 * time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))

    assert run.info.start_time < logged_at("Final model: ") + 1000
    assert run.info.end_time >= logged_at("Model saved: ")
    # the champion rule reads walk-forward scores only: promoted exactly when it beats both baselines there
    wf = run.data.metrics
    promotable = all(wf["walk_forward_f1_macro"] > wf[f"walk_forward_{b}_f1_macro"]
                     for b in ("persistence", "logistic"))
    assert meta["champion"].value is promotable and meta["registered_version"].value == "1"

    # the bundle reloads without any config and gives the logits of the model the run logged
    path = ml_env.data_dir / "models" / "BTCUSDT_linear" / "quantgod_cloud_model.pth"
    assert Path(meta["model_path"].value) == path.resolve()
    # the mid-training checkpoint is gone; the model card is beside the model; the champion's files
    # (bundle, card, pointer) exist exactly when this run became champion, and say so
    champion = ["champion.json", "champion.md", "champion.pth"] if promotable else []
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, path.with_suffix(".md").name,
                                                                    f"{path.stem}.plots.json", *champion])
    if promotable:
        pointer = json.loads((path.parent / "champion.json").read_text())
        assert pointer["registered_version"] == "1" and pointer["mlflow_run_id"] == meta["mlflow_run_id"].value
        assert (path.parent / "champion.pth").read_bytes() == path.read_bytes()
    assert path.with_suffix(".md").read_text().startswith("# Model card: tcn_lstm")
    loaded, bundle = load_model(path)
    assert bundle["label_settings"]["suffix"] == SUFFIX and len(bundle["feature_names"]) == 47
    assert bundle["spec"]["arch"] == "tcn_lstm" and len(bundle["scaler"]["mean"]) == 47
    assert bundle["metrics"]["test_f1_macro"] == pytest.approx(meta["test_f1_macro"].value, abs=1e-4)
    x = np.random.default_rng(0).standard_normal((5, 30, 47)).astype(np.float32)
    logits = predict_logits(loaded, x)
    np.testing.assert_array_equal(logits, predict_logits(load_model(path)[0], x))
    import mlflow.pytorch

    mlflow.set_tracking_uri(uri)
    logged = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/torch_model")
    with torch.no_grad():
        np.testing.assert_allclose(logged(torch.from_numpy(x)).numpy(), logits, rtol=1e-5, atol=1e-5)

    # the registered model is a pyfunc over raw book rows: loaded in a fresh process (this package
    # installed, nothing else), it predicts a preprocessed day exactly as `predict` does
    from quantgod_assets.ml import predict

    day_file = ml_env.preprocessed_dir() / f"{DAYS[-1]}.parquet"
    out_file = ml_env.root / "pyfunc_out.parquet"
    code = ("import sys, mlflow, polars as pl; mlflow.set_tracking_uri(sys.argv[1]); "
            "model = mlflow.pyfunc.load_model(sys.argv[2]); "
            "pl.from_pandas(model.predict(pl.read_parquet(sys.argv[3]).to_pandas())).write_parquet(sys.argv[4])")
    registered = f"models:/quantgod_BTCUSDT_linear/{meta['registered_version'].value}"
    subprocess.run([sys.executable, "-c", code, uri, registered,
                    str(day_file), str(out_file)], check=True, timeout=300, cwd=ml_env.root,
                   env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    expected = predict(path, pl.read_parquet(day_file))
    got = pl.read_parquet(out_file)
    assert got.height == 1440 and got.get_column("has_window").sum() == expected.get_column("has_window").sum() > 1000
    for column in ("p_sell", "p_neutral", "p_buy"):
        np.testing.assert_allclose(got.get_column(column).fill_null(-1).to_numpy(),
                                   expected.get_column(column).fill_null(-1).to_numpy(), rtol=1e-5, atol=1e-6)

    # another day range is another study: new data never reuses the old trials
    cfg = ml_env.config_dir / "training.yaml"
    data = yaml.safe_load(cfg.read_text())
    data["data"] = {"start": "2025-03-10", "end": "2025-03-11"}
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    result = materialize([optimization], instance=instance)
    assert result.success, _failure_text(result)
    second = _metadata(instance, "optimization")["study_name"].value
    assert second != name and second.startswith(f"BTCUSDT_linear_{SUFFIX}_small_2025-03-10_2025-03-11_")
    assert len(optuna.load_study(study_name=second, storage=storage).trials) == 2
    assert len(optuna.load_study(study_name=name, storage=storage).trials) == 2  # the first one untouched


def test_model_refuses_params_searched_under_another_profile(ml_env, monkeypatch):
    """best_params.json from the small profile is not silently used by a full-profile model."""
    path = ml_env.data_dir / "optimization" / "BTCUSDT_linear" / "best_params.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"best_params": {"seq_len": 30, "n_levels": 10}, "profile": "small",
                                "label_suffix": SUFFIX, "feature_hash": "x", "study_name": "s"}))
    monkeypatch.delenv("QUANTGOD_ML_PROFILE")
    result = materialize([model], instance=dg.DagsterInstance.ephemeral())
    assert not result.success
    text = _failure_text(result)
    assert "was searched under profile 'small' (this run: 'default')" in text and "feature code" in text, text
    path.write_text(json.dumps({"seq_len": 30}))  # a file from before provenance was recorded
    text = _failure_text(materialize([model], instance=dg.DagsterInstance.ephemeral()))
    assert "records no profile, labels or feature code" in text, text
    # searched on days reaching into this run's test block (the search's own test block starts later)
    from quantgod_assets.ml.features import FEATURE_CODE_HASH

    path.write_text(json.dumps({"best_params": {"seq_len": 30, "n_levels": 10}, "profile": "default",
                                "label_suffix": SUFFIX, "feature_hash": FEATURE_CODE_HASH, "study_name": "s",
                                "data_start": "2025-03-10", "data_end": "2025-03-20",
                                "test_start": "2025-03-19T00:00+00:00"}))
    text = _failure_text(materialize([model], instance=dg.DagsterInstance.ephemeral()))
    assert "2025-03-10..2025-03-20, which reach into this run's test block (from 2025-03-12 " in text, text
    assert not (ml_env.data_dir / "models" / "BTCUSDT_linear" / "quantgod_cloud_model.pth").exists()


def test_missing_labelled_days_fail_naming_them(ml_env):
    cfg = ml_env.config_dir / "training.yaml"
    data = yaml.safe_load(cfg.read_text())
    data["data"] = {"start": "2025-03-08", "end": "2025-03-13"}
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    instance = dg.DagsterInstance.ephemeral()
    for asset in (optimization, model):
        result = materialize([asset], instance=instance)
        assert not result.success
        text = _failure_text(result)
        assert "2025-03-08..2025-03-09" in text and "2025-03-13" in text and "missing" in text, text
    assert not (ml_env.data_dir / "models" / "BTCUSDT_linear" / "quantgod_cloud_model.pth").exists()


def test_no_labelled_days_at_all_fails_clearly(tmp_path, monkeypatch):
    env = make_env(tmp_path, {})
    for key, value in env.env().items():
        monkeypatch.setenv(key, value)
    result = materialize([optimization], instance=dg.DagsterInstance.ephemeral())
    assert not result.success
    assert "no labelled days in" in _failure_text(result) and "labelled_frame" in _failure_text(result)


def test_model_through_the_cli_with_default_stores(tmp_path):
    """The README's command in a fresh folder: relative sqlite stores land in the working directory."""
    env = make_env(tmp_path / "qg", {})
    _small_overrides(env, absolute_stores=False)
    _label_days(env, DAYS)
    run_env = {**os.environ, **env.env(), "QUANTGOD_ML_PROFILE": "small", "MLFLOW_DISABLE_TELEMETRY": "true"}
    done = subprocess.run(
        [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "quantgod_assets.definitions",
         "--select", "model"],
        cwd=env.root, env=run_env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert (env.data_dir / "models" / "BTCUSDT_linear" / "quantgod_cloud_model.pth").is_file()
    assert (env.root / "mlflow.db").is_file()  # the default tracking store, relative to the cwd
    assert not (env.data_dir / "optimization" / "BTCUSDT_linear" / "best_params.json").exists()
    logs = list((env.logs_dir / "training").iterdir())
    assert len(logs) == 1 and "params from training config" in logs[0].read_text()


# ---------------------------------------------------------------------------------------------
# Settings and launching


def test_ml_settings_defaults_profile_and_overrides(tmp_path, monkeypatch):
    from quantgod_assets.settings import ConfigError, load_settings

    env = make_env(tmp_path, {})
    for key in ("QUANTGOD_ML_PROFILE", "QUANTGOD_OPTUNA_STORAGE", "QUANTGOD_MLFLOW_URI"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("QUANTGOD_CONFIG_DIR", str(env.config_dir))
    monkeypatch.setenv("QUANTGOD_DATA_DIR", str(env.data_dir))
    s = load_settings()
    assert s.optimization.storage == "sqlite:///optuna_study.db" and s.optimization.study_name is None
    assert (s.optimization.folds, s.optimization.metric) == (5, "f1_macro")
    assert (s.optimization.pruner.n_startup_trials, s.optimization.pruner.n_warmup_steps) == (5, 2)
    assert s.optimization.search_space["arch"].choices == ("tcn_lstm", "transformer")
    assert s.training.mlflow.tracking_uri == "sqlite:///mlflow.db" and s.training.arch == "tcn_lstm"
    assert (s.training.data.start, s.training.data.end) == (None, None)
    assert s.training.split.test == 0.15 and s.training.backtest.fee == 0.00055
    assert s.paths.model_path == env.data_dir / "models" / "BTCUSDT_linear" / "quantgod_cloud_model.pth"
    assert s.paths.best_params_path == env.data_dir / "optimization" / "BTCUSDT_linear" / "best_params.json"

    monkeypatch.setenv("QUANTGOD_ML_PROFILE", "small")
    monkeypatch.setenv("QUANTGOD_OPTUNA_STORAGE", "postgresql://u:p@db/optuna")
    monkeypatch.setenv("QUANTGOD_MLFLOW_URI", "http://mlflow:5000")
    s = load_settings()
    assert (s.optimization.n_trials, s.optimization.epochs_per_trial) == (2, 2)
    assert "n_heads" not in s.optimization.search_space  # a profile's search space replaces the whole space
    assert s.optimization.storage == "postgresql://u:p@db/optuna"
    assert s.training.mlflow.tracking_uri == "http://mlflow:5000"
    assert s.training.model_params()["seq_len"] == 30 and s.training.model_params()["n_levels"] == 10
    assert s.training.epochs == 2 and s.training.lr == 0.001  # the rest stays

    monkeypatch.setenv("QUANTGOD_ML_PROFILE", "huge")
    with pytest.raises(ConfigError, match="QUANTGOD_ML_PROFILE=huge"):
        load_settings()
    monkeypatch.delenv("QUANTGOD_ML_PROFILE")
    (env.config_dir / "training.yaml").write_text("arch: lstm\n")
    with pytest.raises(ConfigError, match="arch='lstm'"):
        load_settings()
    (env.config_dir / "training.yaml").write_text("model_type: transformer\nsplit: {test: 1.2}\n")
    with pytest.raises(ConfigError, match=r"split\.test"):
        load_settings()
    (env.config_dir / "training.yaml").write_text("model_type: transformer\ndata: {start: 2025-03-10}\n")
    s = load_settings()
    assert s.training.arch == "transformer" and s.training.data.start == dt.date(2025, 3, 10)


def test_unpartitioned_materialize_command():
    from quantgod_assets.launch import materialize_command

    command = materialize_command(None, select="model")
    assert command[-2:] == ["--select", "model"] and "--partition" not in " ".join(command)


def test_ml_assets_in_the_definitions():
    from quantgod_assets.definitions import defs

    graph = defs.get_repository_def().asset_graph
    assert {"optimization", "model"} <= {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert defs.resolve_assets_def("model").partitions_def is None
    deps = {k.to_user_string() for k in graph.get(dg.AssetKey("model")).parent_keys}
    assert deps == {"BTCUSDT_linear/labelled_frame", "optimization"}  # every configured instrument's labels
