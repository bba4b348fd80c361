"""The evaluation guards itself: generated days through every plain stage (the generator's archives
at one message a second → the numba engine → labels across day ends → the small ML profile's
walk-forward validation, final model and test block).

- Null days (`signal=0`: no drift regimes, no book skew, nothing predicts direction): the verdict
  is "no edge" and nothing is promoted in the registry.
- Signal days: the model beats persistence on the test block with an interval above zero.
"""

import datetime as dt
import json

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from quantgod_assets.labelling import label_day_files
from quantgod_assets.ml.final import train_final_model
from quantgod_assets.orderbook.etl import convert_day
from quantgod_assets.orderbook.synthetic import generate_days
from quantgod_assets.settings import load_settings

from .builders import make_env

START = dt.date(2025, 3, 10)


@pytest.fixture
def small_env(tmp_path, monkeypatch):
    env = make_env(tmp_path, {}, lenient_gaps=False)
    for key, value in env.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("QUANTGOD_ML_PROFILE", "small")
    monkeypatch.setenv("QUANTGOD_MLFLOW_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    yield env
    import mlflow

    while mlflow.active_run():
        mlflow.end_run()


def labelled_days(days: int, seed: int, signal: float):
    """Generated, converted and labelled days; returns the settings that read them."""
    settings = load_settings()
    archives = generate_days(START, days, settings.paths.raw_root, rate_ms=1000, seed=seed, signal=signal)
    for path in archives:
        summary = convert_day(path, settings.paths.preprocessed_path(path.name[:10]))
        assert summary.rows == 1440 and summary.valid_share > 0.99
    for k in range(days):
        label_day_files(settings.paths.preprocessed_dir, settings.paths.labelled_dir, START + dt.timedelta(days=k))
    return settings


def with_evaluation(settings, *, test_share: float, folds: int, epochs: int):
    training = settings.training.with_params({"epochs": epochs})
    training = training.model_copy(update={"split": training.split.model_copy(update={"test": test_share})})
    optimization = settings.optimization.model_copy(update={"folds": folds})
    return settings.model_copy(update={"training": training, "optimization": optimization})


def test_null_days_give_no_edge_and_promote_nothing(small_env):
    settings = labelled_days(6, seed=11, signal=0.0)
    final = train_final_model(settings, use_best_params=False)

    assert final.test["n"] > 1000  # a real test block, not a handful of windows
    assert final.verdict.startswith("no edge: "), final.report.verdicts
    for name in ("persistence", "logistic"):
        assert not final.report.edges[name].low > 0, final.report.verdicts
    assert not final.walk_forward.promotable and not final.promoted, final.promotion
    client = MlflowClient(tracking_uri=settings.training.mlflow.tracking_uri)
    with pytest.raises(MlflowException):  # no version holds the alias
        client.get_model_version_by_alias(settings.training.mlflow.registered_model, "champion")
    run = client.get_run(final.mlflow_run_id)
    assert run.data.tags["champion"] == "false" and run.data.tags["verdict"] == final.verdict
    assert "does not beat" in run.data.tags["champion_reason"]
    assert not settings.paths.champion_path.exists()  # no champion file without a champion


def live_days(settings, *, flip: bool):
    """Three days after the training range (a new stretch of the same market, its book's lean
    flipped or not), preprocessed, labelled and predicted by the champion; the live report on them."""
    from quantgod_assets.daily.predictions import produce_day
    from quantgod_assets.ml.monitor import monitor

    first = START + dt.timedelta(days=8)
    for path in generate_days(first, 3, settings.paths.raw_root / ("flip" if flip else "same"), rate_ms=1000,
                              seed=12, signal=3.0, flip=flip):
        convert_day(path, settings.paths.preprocessed_path(path.name[:10]))
    for k in range(-1, 3):  # the last training day again: its tail now has a next day
        label_day_files(settings.paths.preprocessed_dir, settings.paths.labelled_dir, first + dt.timedelta(days=k))
    for k in range(3):
        assert produce_day(first + dt.timedelta(days=k), settings).published
    report, _picture, info = monitor(settings)
    assert [str(d) for d in info.days] == ["2025-03-18", "2025-03-19", "2025-03-20"]
    return report


@pytest.mark.slow
def test_signal_days_beat_persistence_with_an_interval_above_zero(small_env):
    settings = labelled_days(8, seed=11, signal=3.0)
    # a test block of ~3 days: enough hours (and moving blocks) for the interval to mean something
    settings = with_evaluation(settings, test_share=0.4, folds=2, epochs=3)
    final = train_final_model(settings, use_best_params=False)

    edge = final.report.edges["persistence"]
    assert final.test["n"] > 4000
    assert edge.low > 0, final.report.verdicts
    assert final.report.verdicts["persistence"].endswith(": significant")
    assert final.test["f1_macro"] > final.baselines["majority"]["f1_macro"] + 0.1
    # it beats persistence and logistic on walk-forward too: the first champion, on disk as in the registry
    assert final.walk_forward.promotable and final.promoted, final.promotion
    champion = settings.paths.champion_path
    assert final.champion_path == champion and champion.read_bytes() == final.model_path.read_bytes()
    pointer = json.loads(champion.with_suffix(".json").read_text())
    assert pointer["registered_version"] == final.registered_version == "1"
    client = MlflowClient(tracking_uri=settings.training.mlflow.tracking_uri)
    holder = client.get_model_version_by_alias(settings.training.mlflow.registered_model, "champion")
    assert str(holder.version) == pointer["registered_version"] and holder.run_id == pointer["mlflow_run_id"]

    # live_performance on the days after the training range: quiet while the market stays the
    # same, a warning once the book leans the other way (the signal flipped sign)
    same = live_days(settings, flip=False)
    assert not same.model_below_persistence, same.summary()
    flipped = live_days(settings, flip=True)
    assert flipped.model_below_persistence, flipped.summary()
    assert any("below persistence" in line for line in flipped.warnings())
    assert flipped.rolling["model"][-1] < same.rolling["model"][-1] - 0.1


@pytest.mark.slow
def test_a_pooled_model_reports_each_instrument_and_scores_an_unseen_one(small_env, monkeypatch):
    import yaml

    from quantgod_assets.ml.predict import predict

    etl = small_env.config_dir / "etl.yaml"
    data = yaml.safe_load(etl.read_text())
    data.pop("symbol", None)
    data["instruments"] = [{"symbol": s} for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT")]
    etl.write_text(yaml.safe_dump(data))
    training = small_env.config_dir / "training.yaml"
    tr = yaml.safe_load(training.read_text())
    tr.update({"instruments": ["BTCUSDT", "ETHUSDT"], "unseen_instruments": ["SOLUSDT"]})
    training.write_text(yaml.safe_dump(tr))
    monkeypatch.setenv("QUANTGOD_SYMBOL", "")  # the list, not the one-symbol shortcut
    settings = load_settings()
    for k, instrument in enumerate(settings.instruments):  # each its own market, price scale and tick
        own = settings.for_instrument(instrument)
        for path in generate_days(START, 4, own.paths.raw_root / instrument.key, rate_ms=1000, seed=31 + k,
                                  signal=3.0, symbol=instrument.symbol):
            assert convert_day(path, own.paths.preprocessed_path(path.name[:10])).rows == 1440
        for d in range(4):
            label_day_files(own.paths.preprocessed_dir, own.paths.labelled_dir, START + dt.timedelta(days=d))
    settings = with_evaluation(settings, test_share=0.3, folds=2, epochs=1)

    final = train_final_model(settings, use_best_params=False)

    assert final.model_path.parent.name == "BTCUSDT_linear+ETHUSDT_linear"
    assert set(final.report.instruments) == {"BTCUSDT_linear", "ETHUSDT_linear"}
    per = final.report.instruments
    # the pooled interval: the same minutes of both instruments resampled together (blocks twice as long)
    one_block = settings.training.evaluation.block_minutes or max(settings.labelling.lookahead, final.params["seq_len"])
    assert final.report.block == 2 * one_block and per["ETHUSDT_linear"].block == one_block
    assert sum(r.model["n"] for r in per.values()) == final.test["n"]  # the pooled block: the instruments' together
    for key in per:  # each instrument scored with its interval next to the baselines
        assert 0 <= final.test[f"f1_macro_{key}"] <= 1
        assert f"baseline_persistence_f1_macro_{key}" in final.test
    assert set(final.report.unseen) == {"SOLUSDT_linear"}
    assert 0 <= final.test["unseen_SOLUSDT_linear_f1_macro"] <= 1
    card = final.model_path.with_suffix(".md").read_text()
    assert "ETHUSDT_linear" in card and "SOLUSDT_linear" in card
    # the backtest says what it trades: the headline on BTC's block, then each instrument's own
    assert "the first table trades BTCUSDT_linear's test block" in card
    assert set(final.backtests_by_instrument) == {"BTCUSDT_linear", "ETHUSDT_linear"}
    btc = final.backtests_by_instrument["BTCUSDT_linear"]["model"]
    assert (btc["net_return"], btc["n_trades"]) == (final.backtests["model"]["net_return"],
                                                    final.backtests["model"]["n_trades"])  # the same block
    assert "| ETHUSDT_linear | **model** |" in card
    client = MlflowClient(tracking_uri=settings.training.mlflow.tracking_uri)
    metrics = client.get_run(final.mlflow_run_id).data.metrics
    assert "test_f1_macro_ETHUSDT_linear" in metrics and "test_unseen_SOLUSDT_linear_f1_macro" in metrics
    assert "backtest_ETHUSDT_linear_net_return" in metrics
    assert client.get_run(final.mlflow_run_id).data.tags["backtest_net_return"].endswith(", BTCUSDT_linear only)")

    # live monitoring compares each instrument with its own training deciles (sizes on their own scale)
    from quantgod_assets.ml.predict import Predictor

    bins = Predictor.load(final.model_path).bundle["extra"]["feature_bins_by_instrument"]
    assert set(bins) == {"BTCUSDT_linear", "ETHUSDT_linear"} and bins["BTCUSDT_linear"] != bins["ETHUSDT_linear"]

    # the bundle scores each training instrument's day with that instrument's statistics
    import polars as pl

    eth = settings.for_instrument("ETHUSDT")
    frames = [pl.read_parquet(eth.paths.preprocessed_path(START + dt.timedelta(days=d))) for d in (2, 3)]
    with pytest.raises(ValueError, match="name the instrument"):
        predict(final.model_path, frames)
    as_eth = predict(final.model_path, frames, instrument="ETHUSDT_linear")
    as_btc = predict(final.model_path, frames, instrument="BTCUSDT_linear")
    assert as_eth.height == as_btc.height and not as_eth["p_buy"].equals(as_btc["p_buy"])
    # the registered pyfunc the same, told the rows' instrument by a column
    import mlflow

    mlflow.set_tracking_uri(settings.training.mlflow.tracking_uri)
    name = settings.training.mlflow.registered_model
    registered = mlflow.pyfunc.load_model(f"models:/{name}/{final.registered_version}")
    rows = pl.concat(frames).with_columns(pl.lit("ETHUSDT_linear").alias("instrument"))
    from_registry = pl.from_pandas(registered.predict(rows.to_pandas()))
    assert from_registry["p_buy"].to_list() == pytest.approx(as_eth["p_buy"].to_list(), abs=1e-5, nan_ok=True)
