"""MLflow on a temporary SQLite store: study parent + nested trial runs, the final model's run,
the registry alias `champion` moved only by a better model; run names that say what differs, runs
whose start and end enclose their work, the headline as tags and summary.md / summary.json, the
Dagster run linked."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from quantgod_assets.ml import evaluation
from quantgod_assets.ml.evaluation import FoldScore, WalkForwardReport
from quantgod_assets.ml.final import FinalModel
from quantgod_assets.ml.models import build_model
from quantgod_assets.ml.tracking import dagster_tags, headline, headline_tags, log_final_model, run_name
from quantgod_assets.ml.train import TrainConfig, evaluate, train_model
from quantgod_assets.ml.tune import run_study
from quantgod_assets.plots import confusion_figure
from quantgod_assets.settings import EvaluationSettings, OptimizationSettings, TrainingSettings
from quantgod_assets_tests.builders import (
    SPACE,
    make_datasets,
    planted_signal,
    split_windows,
)

INTERVAL = re.compile(r"^0\.\d{3} \[0\.\d{3}, 0\.\d{3}\]$")  # `0.412 [0.351, 0.470]`


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("DAGSTER_WEBSERVER_URL", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    yield uri, tmp_path
    while mlflow.active_run():
        mlflow.end_run()


def test_study_has_a_parent_run_and_a_nested_run_per_trial(store):
    uri, tmp_path = store
    search = {"search_space": SPACE, "storage": f"sqlite:///{tmp_path / 'optuna.db'}", "seed": 3,
              "mlflow_experiment": "opt"}
    cpu = TrainingSettings(device="cpu")
    march = {"data_start": "2025-03-10", "data_end": "2025-03-12"}
    started = time.time()
    run_study(make_datasets, OptimizationSettings.model_validate({**search, "n_trials": 2, "epochs_per_trial": 2}),
              cpu, "labels_h15_t8", mlflow_tracking_uri=uri, mlflow_artifact_location=tmp_path / "art",
              provenance=march, instrument="BTCUSDT", dagster_run_id="run-a")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("opt")
    assert experiment.artifact_location.startswith("file://") and "art" in experiment.artifact_location
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("run_kind") == "study"]
    trials = [r for r in runs if r.data.tags.get("run_kind") == "trial"]
    assert len(parents) == 1 and len(trials) == 2
    parent = parents[0]
    assert parent.data.metrics["best_objective"] > 0
    # names say what differs: kind, the arch(s) searched, instrument, data range, UTC start
    when = dt.datetime.fromtimestamp(parent.info.start_time / 1000, dt.UTC).strftime("%m-%d %H:%M")
    assert parent.info.run_name == f"study tcn_lstm/transformer BTCUSDT 2025-03-10..2025-03-12 {when}"
    assert parent.info.start_time >= 1000 * int(started)
    assert parent.data.tags["dagster_run_id"] == "run-a"
    assert parent.data.tags["dagster_run_url"] == "http://127.0.0.1:3000/runs/run-a"
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert "lr" in run.data.params and "seq_len" in run.data.params
        arch, number = run.data.params["arch"], run.data.tags["optuna_trial"]
        assert run.info.run_name.startswith(f"trial {number} {arch} BTCUSDT 2025-03-10..2025-03-12 ")
        assert run.data.tags["dagster_run_id"] == "run-a" and run.data.tags["data_range"] == "2025-03-10..2025-03-12"
        history = client.get_metric_history(run.info.run_id, "val_f1_macro")
        assert [m.step for m in history] == [1, 2]
        # the trial's run encloses its training: opened before the first epoch, closed after the last
        assert run.info.start_time <= history[0].timestamp and run.info.end_time >= history[-1].timestamp
        assert run.data.tags["optuna_state"] == "COMPLETE"
        assert run.data.metrics["objective_f1_macro"] == pytest.approx(run.data.metrics["fold_1_f1_macro"])

    # a second run adds its trials to the study and re-opens the same parent run
    run_study(make_datasets, OptimizationSettings.model_validate({**search, "n_trials": 3, "epochs_per_trial": 1}),
              cpu, "labels_h15_t8", mlflow_tracking_uri=uri)
    runs = client.search_runs([experiment.experiment_id])
    assert len([r for r in runs if r.data.tags.get("run_kind") == "study"]) == 1
    assert len([r for r in runs if r.data.tags.get("run_kind") == "trial"]) == 5

    # another data range and another arch: another study, and a parent run named apart
    fixed = {**SPACE, "arch": {"type": "fixed", "value": "tcn_lstm"}}
    run_study(make_datasets, OptimizationSettings.model_validate({**search, "search_space": fixed, "n_trials": 1,
                                                                  "epochs_per_trial": 1}),
              cpu, "labels_h15_t8_later", mlflow_tracking_uri=uri, instrument="BTCUSDT",
              provenance={"data_start": "2025-03-13", "data_end": "2025-03-20"})
    names = {r.data.tags["optuna_study"]: r.info.run_name for r in client.search_runs([experiment.experiment_id])
             if r.data.tags.get("run_kind") == "study"}
    assert names["labels_h15_t8_later"].startswith("study tcn_lstm BTCUSDT 2025-03-13..2025-03-20 ")
    assert names["labels_h15_t8_later"] != names["labels_h15_t8"]


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


def _judged(tmp_path: Path, model, test) -> FinalModel:
    """A FinalModel over a real model's test predictions: the report, baselines and walk-forward
    as `train_final_model` builds them (`test_report`), the backtest given."""
    scores = evaluate(model, test, "cpu", batch_size=64)
    y_true, y_pred = scores["y_true"], scores["y_pred"]
    rng = np.random.default_rng(0)
    baselines = {"majority": np.ones_like(y_true), "stratified": rng.integers(0, 3, y_true.size),
                 "persistence": np.roll(y_true, 1), "logistic": np.where(rng.random(y_true.size) < 0.5, y_true, 1)}
    report = evaluation.test_report(y_true, y_pred, baselines, EvaluationSettings(resamples=200), block=2)
    folds = [FoldScore(1, 100, 40, ("2025-03-11 00:00", "2025-03-11 12:00"), 0.41,
                       {"persistence": 0.38, "logistic": 0.39})]
    backtest = {"net_return": 0.0123, "net_return_low": -0.005, "net_return_high": 0.029, "n_trades": 42}
    return FinalModel(
        model_path=tmp_path / "quantgod_cloud_model.pth", params={"arch": "tcn_lstm"}, params_source="test",
        history=[], best_epoch=1, best_val_f1_macro=0.4, n_parameters=1, device="cpu", test=report.model,
        baselines=report.baselines, backtests={"model": backtest}, sizes={}, days=[dt.date(2025, 3, 10),
                                                                                     dt.date(2025, 3, 12)],
        confusion_png=b"", curve_png=b"", walk_forward=WalkForwardReport("f1_macro", folds), report=report,
        test_period=("2025-03-12 06:00", "2025-03-12 23:59"),
    )


def test_final_run_spans_its_training_leads_with_its_headline_and_links_dagster(store, monkeypatch):
    uri, tmp_path = store
    x, y = planted_signal(n_rows=900, seq_len=8)
    train, val, test = split_windows(x, y, 8)
    before = time.time()  # the work starts: the run must start no later
    torch.manual_seed(0)
    model = build_model("tcn_lstm", x.shape[1], {"tcn_channels": 8, "lstm_hidden": 8, "seq_len": 8})
    train_model(model, train, val, TrainConfig(epochs=2, batch_size=64, device="cpu"))
    final = _judged(tmp_path, model, test)
    after = time.time()  # the work is done: the run must end no earlier
    assert after - before > 0.05  # there was work to cover

    monkeypatch.setenv("DAGSTER_WEBSERVER_URL", "https://ops:hunter2@dagster.example.com/")
    links = dagster_tags("0f1e2d3c")
    name = run_name("final", "tcn_lstm", "BTCUSDT", "2025-03-10..2025-03-12", before)
    summary = {"run_name": name, **headline(final), **links}
    final.model_path.write_bytes(b"bundle")
    logged = log_final_model(
        model, params={"arch": "tcn_lstm"}, history=[], test_metrics={"f1_macro": final.test["f1_macro"]},
        confusion=final.test["confusion"], input_example=np.stack([test[i][0].numpy() for i in range(2)]),
        tracking_uri=uri, experiment="final", run_name=name, registered_model_name="quantgod_test",
        tags={**headline_tags(summary), **links}, champion_score=0.41, started_at=before, summary=summary,
    )
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(logged.run_id)

    # the run's start and end enclose the work, not only the logging that followed it
    assert run.info.start_time <= 1000 * before and run.info.end_time >= 1000 * after
    assert run.info.status == "FINISHED" and run.info.run_name == name
    assert re.fullmatch(r"final tcn_lstm BTCUSDT 2025-03-10\.\.2025-03-12 \d\d-\d\d \d\d:\d\d", name)

    # the headline as tags: the interval form, every baseline, the verdict, the backtest
    tags = run.data.tags
    assert INTERVAL.match(tags["test_f1_macro"]) and tags["test_f1_macro"] == final.report.interval.format()
    for baseline in ("majority", "stratified", "persistence", "logistic"):
        assert tags[f"baseline_{baseline}"] == f"{final.baselines[baseline]['f1_macro']:.3f}"
    assert tags["verdict"] == final.verdict and tags["verdict"].startswith(("edge: ", "no edge: "))
    assert tags["backtest_net_return"] == "+1.23 % [-0.50 %, +2.90 %] (42 trades)"
    # the Dagster run: its id, and its page at DAGSTER_WEBSERVER_URL with the password masked
    assert tags["dagster_run_id"] == "0f1e2d3c"
    assert tags["dagster_run_url"] == "https://ops:***@dagster.example.com/runs/0f1e2d3c"
    assert "hunter2" not in repr(tags) + repr(run.data.params)

    # ... and as summary.md / summary.json beside the full metrics
    assert {"summary.md", "summary.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    folder = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "got")))
    table = (folder / "summary.md").read_text()
    assert table.startswith(f"# {name}\n") and tags["test_f1_macro"] in table
    assert f"**Verdict: {final.verdict}**" in table
    for baseline in ("majority", "stratified", "persistence", "logistic"):
        assert f"| {baseline} | {tags[f'baseline_{baseline}']} | {final.report.edges[baseline].format(signed=True)} |" \
            in table
    assert "- Backtest net return: +1.23 % [-0.50 %, +2.90 %] (42 trades)" in table
    assert "- Champion: yes: " in table and "https://ops:***@dagster.example.com/runs/0f1e2d3c" in table
    assert "hunter2" not in table
    data = json.loads((folder / "summary.json").read_text())
    assert sorted(data["baselines"]) == ["logistic", "majority", "persistence", "stratified"]
    assert data["test_f1_macro"]["low"] <= data["test_f1_macro"]["estimate"] <= data["test_f1_macro"]["high"]
    assert data["champion"] is True and data["walk_forward_f1_macro"]["model"] == pytest.approx(0.41)
    assert data["dagster_run_id"] == "0f1e2d3c" and data["backtest_net_return"]["n_trades"] == 42


def test_run_names_tell_runs_apart():
    t = dt.datetime(2025, 3, 14, 10, 41, 30, tzinfo=dt.UTC)
    base = run_name("final", "tcn_lstm", "BTCUSDT", "2025-03-10..2025-03-12", t)
    assert base == "final tcn_lstm BTCUSDT 2025-03-10..2025-03-12 03-14 10:41"
    others = {run_name("final", "transformer", "BTCUSDT", "2025-03-10..2025-03-12", t),
              run_name("final", "tcn_lstm", "BTCUSDT", "2025-03-10..2025-03-20", t),
              run_name("final", "tcn_lstm", "ETHUSDT", "2025-03-10..2025-03-12", t),
              run_name("final", "tcn_lstm", "BTCUSDT", "2025-03-10..2025-03-12", t + dt.timedelta(minutes=1))}
    assert len(others) == 4 and base not in others
    assert dagster_tags(None) == {} and dagster_tags("") == {}
