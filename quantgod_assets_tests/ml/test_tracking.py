"""MLflow on a temporary SQLite store: study parent + nested trial runs, the final model's run,
the registry alias `champion` moved only by a better model."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from quantgod_assets.ml.models import build_model
from quantgod_assets.ml.tracking import log_final_model
from quantgod_assets.ml.train import TrainConfig, train_model
from quantgod_assets.ml.tune import run_study
from quantgod_assets.plots import confusion_figure
from quantgod_assets.settings import OptimizationSettings, TrainingSettings
from quantgod_assets_tests.builders import (
    SPACE,
    make_datasets,
    planted_signal,
    split_windows,
)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    yield uri, tmp_path
    while mlflow.active_run():
        mlflow.end_run()


def test_study_has_a_parent_run_and_a_nested_run_per_trial(store):
    uri, tmp_path = store
    search = {"search_space": SPACE, "storage": f"sqlite:///{tmp_path / 'optuna.db'}", "seed": 3,
              "mlflow_experiment": "opt"}
    cpu = TrainingSettings(device="cpu")
    run_study(make_datasets, OptimizationSettings.model_validate({**search, "n_trials": 2, "epochs_per_trial": 2}),
              cpu, "labels_h15_t8", mlflow_tracking_uri=uri, mlflow_artifact_location=tmp_path / "art")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("opt")
    assert experiment.artifact_location.startswith("file://") and "art" in experiment.artifact_location
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("run_kind") == "study"]
    trials = [r for r in runs if r.data.tags.get("run_kind") == "trial"]
    assert len(parents) == 1 and len(trials) == 2
    parent = parents[0]
    assert parent.data.metrics["best_objective"] > 0
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert "lr" in run.data.params and "seq_len" in run.data.params
        history = client.get_metric_history(run.info.run_id, "val_f1_macro")
        assert [m.step for m in history] == [1, 2]
        assert run.data.tags["optuna_state"] == "COMPLETE"
        assert run.data.metrics["objective_f1_macro"] == pytest.approx(run.data.metrics["fold_1_f1_macro"])

    # a second run adds its trials to the study and re-opens the same parent run
    run_study(make_datasets, OptimizationSettings.model_validate({**search, "n_trials": 3, "epochs_per_trial": 1}),
              cpu, "labels_h15_t8", mlflow_tracking_uri=uri)
    runs = client.search_runs([experiment.experiment_id])
    assert len([r for r in runs if r.data.tags.get("run_kind") == "study"]) == 1
    assert len([r for r in runs if r.data.tags.get("run_kind") == "trial"]) == 5


def _final(uri, tmp_path, model, f1, test_x, name="final", walk_forward=None, eligible=True, data_range=None):
    history = [{"epoch": 1, "val_f1_macro": 0.3, "train_loss": 1.0},
               {"epoch": 2, "val_f1_macro": 0.35, "train_loss": 0.9}]
    bundle = tmp_path / "quantgod_cloud_model.pth"
    bundle.write_bytes(b"bundle")
    return log_final_model(
        model,
        params={"arch": "tcn_lstm", "lr": 1e-3, "class_weights": [2.0, 1.0, 2.0]},
        history=history,
        test_metrics={"f1_macro": f1, "f1_weighted": 0.5, "f1_sell": float("nan")},
        confusion=[[5, 1, 0], [2, 10, 3], [0, 1, 4]],
        input_example=test_x[:1],
        tracking_uri=uri,
        experiment="final",
        run_name=name,
        registered_model_name="quantgod_test",
        artifacts=[bundle],
        extra_metrics={"baseline_majority_f1_macro": 0.25, "backtest_sharpe": float("nan")},
        champion_score=f1 if walk_forward is None else walk_forward, eligible=eligible,
        not_eligible_reason="does not beat persistence", data_range=data_range,
    )


def test_final_model_run_and_champion_alias(store):
    uri, tmp_path = store
    x, y = planted_signal(n_rows=400, seq_len=8)
    train, val, test = split_windows(x, y, 8)
    torch.manual_seed(0)
    model = build_model("tcn_lstm", x.shape[1], {"tcn_channels": 8, "lstm_hidden": 8, "seq_len": 8})
    result = train_model(model, train, val, TrainConfig(epochs=1, batch_size=64, device="cpu"))
    test_x = np.stack([test[i][0].numpy() for i in range(4)])

    first = _final(uri, tmp_path, model, 0.40, test_x, "first")
    assert first.promoted and first.previous_champion_score is None and first.registered_version == "1"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.get_run(first.run_id)
    assert run.data.metrics["test_f1_macro"] == pytest.approx(0.40)
    assert "test_f1_sell" not in run.data.metrics  # NaN is left out
    assert [m.step for m in client.get_metric_history(first.run_id, "val_f1_macro")] == [1, 2]
    assert run.data.params["lr"] == "0.001"
    artifacts = {a.path for a in client.list_artifacts(first.run_id)}
    assert {"confusion_matrix.png", "confusion_matrix.json", "quantgod_cloud_model.pth"} <= artifacts

    worse = _final(uri, tmp_path, model, 0.35, test_x, "worse")
    assert not worse.promoted and worse.previous_champion_score == pytest.approx(0.40)
    assert str(client.get_model_version_by_alias("quantgod_test", "champion").version) == "1"

    better = _final(uri, tmp_path, model, 0.45, test_x, "better")
    assert better.promoted and better.registered_version == "3"
    assert str(client.get_model_version_by_alias("quantgod_test", "champion").version) == "3"

    # the test score never chooses: a far better test score with a worse walk-forward score stays out
    lucky = _final(uri, tmp_path, model, 0.90, test_x, "lucky_on_test", walk_forward=0.30)
    assert not lucky.promoted and "does not beat the champion's 0.4500" in lucky.reason
    assert lucky.previous_champion_test_f1_macro == pytest.approx(0.45)  # reported beside it
    # a model that does not beat the baselines on walk-forward is never promoted, however high
    below = _final(uri, tmp_path, model, 0.50, test_x, "below_baselines", walk_forward=0.99, eligible=False)
    assert not below.promoted and below.reason == "does not beat persistence"
    assert str(client.get_model_version_by_alias("quantgod_test", "champion").version) == "3"
    # exactly one run carries champion=true: the alias holder's
    runs = client.search_runs([client.get_experiment_by_name("final").experiment_id])
    assert [r.info.run_name for r in runs if r.data.tags.get("champion") == "true"] == ["better"]

    # walk-forward scores of different periods are not compared: newer data takes over, older never
    ranged = _final(uri, tmp_path, model, 0.5, test_x, "ranged", walk_forward=0.50, data_range="2025-03-10..2025-03-20")
    assert ranged.promoted  # the holder recorded no range: scores compared, 0.50 > 0.45
    older = _final(uri, tmp_path, model, 0.5, test_x, "older", walk_forward=0.90, data_range="2025-03-01..2025-03-15")
    assert not older.promoted and "never displaces" in older.reason
    newer = _final(uri, tmp_path, model, 0.5, test_x, "newer", walk_forward=0.30, data_range="2025-03-10..2025-03-25")
    assert newer.promoted and "newer data" in newer.reason
    runs = client.search_runs([client.get_experiment_by_name("final").experiment_id])
    assert [r.info.run_name for r in runs if r.data.tags.get("champion") == "true"] == ["newer"]

    # the registered model loads back and predicts like the trained one, any batch size
    loaded = mlflow.pytorch.load_model("models:/quantgod_test@champion")
    model.eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(test_x)).numpy()
        got = loaded(torch.from_numpy(test_x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert result.best_epoch == 1


def test_confusion_figure_renders_headless(tmp_path):
    fig = confusion_figure(np.array([[3, 1, 0], [0, 5, 1], [1, 0, 2]]))
    path = tmp_path / "cm.png"
    fig.savefig(path)
    assert path.stat().st_size > 1000
