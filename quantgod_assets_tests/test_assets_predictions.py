"""The `predictions` asset: the champion's bundle scores each day's book (the day before as
history), one file per day under the model's version, a coverage check, nothing without a champion."""

import datetime as dt
import json

import dagster as dg
import numpy as np
import polars as pl
import pytest

from quantgod_assets.assets.predictions import prediction_assets_for_instrument
from quantgod_assets.daily.predictions import COVERAGE
from quantgod_assets.ml.predict import Predictor, predict
from quantgod_assets.settings import DEFAULT_INSTRUMENT

from .builders import QuantGodEnv, make_day_frame, make_env, materialize, write_pre_days

predictions, live_performance = prediction_assets_for_instrument(DEFAULT_INSTRUMENT)

DAY1, DAY2, DAY3 = dt.date(2025, 3, 10), dt.date(2025, 3, 11), dt.date(2025, 3, 12)
SEQ_LEN, N_LEVELS = 10, 2

@pytest.fixture
def pred_env(tmp_path, monkeypatch) -> QuantGodEnv:
    env = make_env(tmp_path, {})
    for key, value in env.env().items():
        monkeypatch.setenv(key, value)
    write_pre_days(env.preprocessed_dir(), [DAY1, DAY2])
    return env

def write_champion(env: QuantGodEnv, trained_to: str = "2025-03-09") -> str:
    """An untrained tcn_lstm saved as `model` saves its champion (with the training reference live
    monitoring reads), the pointer beside it saying it was trained on days up to `trained_to`."""
    import torch

    from quantgod_assets.ml.dataset import Scaler
    from quantgod_assets.ml.features import frame_features, n_features
    from quantgod_assets.ml.models import build_model
    from quantgod_assets.ml.train import save_model

    torch.manual_seed(0)
    block = frame_features(make_day_frame(DAY1, seed=0), N_LEVELS)
    scaler = Scaler.fit(block.values, block.valid, block.names)
    model = build_model("tcn_lstm", n_features(N_LEVELS), {"seq_len": SEQ_LEN, "tcn_channels": 4, "lstm_hidden": 4})
    path = env.data_dir / "models" / "BTCUSDT_linear" / "champion.pth"
    from quantgod_assets.ml.live import feature_bins

    reference = {"feature_bins": feature_bins(block.values, block.valid).tolist(), "train_priors": [0.3, 0.5, 0.2]}
    save_model(path, model, feature_names=block.names, scaler_dict=scaler.to_dict(),
               label_settings={"classes": ["SELL", "NEUTRAL", "BUY"], "lookahead": 60},
               extra={"seq_len": SEQ_LEN, "n_levels": N_LEVELS, **reference})
    path.with_suffix(".json").write_text(json.dumps({"registered_version": "3", "mlflow_run_id": "abc",
                                                     "data_range": f"2025-03-01..{trained_to}"}))
    return Predictor.load(path).version

def test_without_a_champion_the_day_fails_saying_what_to_run(pred_env):
    result = materialize([predictions], partition=DAY1)
    assert not result.success
    failure = result.failure_data_for_node("BTCUSDT_linear__predictions").user_failure_data
    assert "no champion model at" in failure.description and "materialize model" in failure.description

def test_a_range_predicts_each_day_with_the_day_before_as_history(pred_env):
    version = write_champion(pred_env)
    result = materialize([predictions], partition=(DAY1, DAY3))  # DAY3 has no book: it fails alone
    assert not result.success
    failure = result.failure_data_for_node("BTCUSDT_linear__predictions").user_failure_data
    assert failure.metadata["failed_days"].value == ["2025-03-12"] and "preprocessed_book" in failure.description
    events = {e.partition: e for e in result.asset_materializations_for_node("BTCUSDT_linear__predictions")}
    assert sorted(events) == ["2025-03-10", "2025-03-11"]
    meta = events["2025-03-11"].metadata
    assert meta["model_version"].value == version and meta["registered_version"].value == "3"
    assert meta["history_days"].value == 1 and meta["predicted_minutes"].value == 1440

    out = pred_env.data_dir / "predictions" / "BTCUSDT_linear" / version
    files = {day: out / f"{day}.parquet" for day in (DAY1, DAY2)}
    day2 = pl.read_parquet(files[DAY2])
    assert day2.height == 1440 and day2.get_column("has_window").all()
    # the same numbers as the library's predict over both days
    frames = [pl.read_parquet(pred_env.preprocessed(d)) for d in (DAY1, DAY2)]
    expected = predict(pred_env.data_dir / "models" / "BTCUSDT_linear" / "champion.pth", frames).tail(1440)
    np.testing.assert_allclose(day2.select("p_sell", "p_buy").to_numpy(), expected.select("p_sell", "p_buy").to_numpy())

    # coverage: day 1 has no day before, so its first minutes have no window (WARN); day 2 is covered
    checks = {e.partition: e for e in result.get_asset_check_evaluations() if e.check_name == COVERAGE}
    assert checks["2025-03-11"].passed
    assert not checks["2025-03-10"].passed
    # (its first minute has no mid return, so it is no valid minute: seq_len - 1 uncovered)
    assert checks["2025-03-10"].metadata["uncovered_minutes"].value == SEQ_LEN - 1
    assert pl.read_parquet(files[DAY1]).get_column("has_window").sum() == 1440 - SEQ_LEN
    text = next((pred_env.logs_dir / "predictions").glob("predictions_*.log")).read_text()
    assert "Coverage 2025-03-10: 9 of 1439 valid minutes have no prediction, the first at 00:01 UTC" in text

def test_live_performance_judges_the_days_after_the_training_range(pred_env):
    from quantgod_assets.assets.predictions import LIVE_HOLDS
    from quantgod_assets.labelling import label_day_files

    write_champion(pred_env, trained_to="2025-03-10")  # DAY2 is the one day after it
    instance = dg.DagsterInstance.ephemeral()
    assert materialize([predictions], instance=instance, partition=(DAY1, DAY2)).success
    pre, out = pred_env.preprocessed_dir(), pred_env.labelled_dir()
    # nothing labelled yet: nothing to judge, in one line
    result = materialize([live_performance], instance=instance)
    assert not result.success
    assert "no day after the champion's training range (to 2025-03-10)" in _failure(result)

    for day in (DAY1, DAY2):
        label_day_files(pre, out, day)
    result = materialize([live_performance], instance=instance)
    assert result.success
    meta = result.asset_materializations_for_node("BTCUSDT_linear__live_performance")[0].metadata
    assert meta["days"].value == 1 and meta["first_day"].value == "2025-03-11"
    assert meta["picture"].value.startswith("![live performance](data:image/png;base64,")
    assert 0 <= meta["rolling_f1_model"].value <= 1 and meta["psi_max"].value >= 0
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == LIVE_HOLDS
    flags = check.metadata
    assert check.passed == (not flags["model_below_persistence"].value and not flags["drifted"].value)

def _failure(result) -> str:
    failure = result.failure_data_for_node("BTCUSDT_linear__live_performance")
    return failure.user_failure_data.description if failure.user_failure_data else str(failure.error)
