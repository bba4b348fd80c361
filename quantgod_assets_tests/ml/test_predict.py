"""`ml.predict` and `quantgod predict`: a saved bundle's per-minute probabilities on preprocessed days.

The key test trains the small profile's final model on three labelled days and checks that
`predict` on the preprocessed days gives, at the test windows, the probabilities the training
code's own windows give. The other tests use a tiny untrained bundle (2 levels, seq_len 10):
they are about days, windows, files and errors, not about what the model learnt.
"""

import datetime as dt
import hashlib
import os
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
import torch

from quantgod_assets import cli
from quantgod_assets.labelling import label_day_files
from quantgod_assets.ml.dataset import Scaler
from quantgod_assets.ml.features import frame_features, n_features
from quantgod_assets.ml.models import build_model
from quantgod_assets.ml.predict import OUTPUT_COLUMNS, BundleError, Predictor, predict
from quantgod_assets.ml.train import save_model

from ..builders import make_day_frame, make_env, write_pre_days

DAY1, DAY2, DAY3 = dt.date(2025, 3, 10), dt.date(2025, 3, 11), dt.date(2025, 3, 12)
SEQ_LEN, N_LEVELS = 10, 2
PROBABILITIES = ["p_sell", "p_neutral", "p_buy"]


@pytest.fixture(scope="module")
def days() -> list[pl.DataFrame]:
    """Two consecutive preprocessed days (the seeds `write_pre_days` gives them)."""
    return [make_day_frame(DAY1, seed=0), make_day_frame(DAY2, seed=1)]


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory, days) -> str:
    """An untrained tcn_lstm saved as the pipeline saves models, its scaler fitted on day 1."""
    torch.manual_seed(0)
    block = frame_features(days[0], N_LEVELS)
    scaler = Scaler.fit(block.values, block.valid, block.names)
    model = build_model("tcn_lstm", n_features(N_LEVELS), {"seq_len": SEQ_LEN, "tcn_channels": 4, "lstm_hidden": 4})
    path = tmp_path_factory.mktemp("model") / "tiny.pth"
    save_model(path, model, feature_names=block.names, scaler_dict=scaler.to_dict(),
               label_settings={"classes": ["SELL", "NEUTRAL", "BUY"]},
               extra={"seq_len": SEQ_LEN, "n_levels": N_LEVELS})
    return str(path)


def _probabilities(table: pl.DataFrame) -> np.ndarray:
    return table.select(PROBABILITIES).to_numpy()


# ---------------------------------------------------------------------------------------------
# The same probabilities as training


def _train_small_model(tmp_path, monkeypatch):
    """Three labelled days and the small profile's final model on them, made lighter (tiny
    channels, few batches, 2 folds, 1 epoch); returns the settings."""
    from quantgod_assets.settings import load_settings

    env = make_env(tmp_path, {})
    for key, value in env.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("QUANTGOD_ML_PROFILE", "small")
    env.set_profile("small", max_batches_per_epoch=4, tcn_channels=8, lstm_hidden=8, epochs=1)
    pre = env.preprocessed_dir()
    write_pre_days(pre, [DAY1, DAY2, DAY3])
    for day in (DAY1, DAY2, DAY3):
        label_day_files(pre, env.labelled_dir(), day)
    settings = load_settings()
    return settings.model_copy(update={"optimization": settings.optimization.model_copy(update={"folds": 2})})


@pytest.mark.slow
def test_predict_gives_the_probabilities_of_the_training_windows(tmp_path, monkeypatch):
    from quantgod_assets.ml.data import prepare_data
    from quantgod_assets.ml.final import train_final_model
    from quantgod_assets.ml.train import load_model

    settings = _train_small_model(tmp_path, monkeypatch)
    train_final_model(settings, use_best_params=False, mlflow=False)
    bundle_path = settings.paths.model_path
    model, bundle = load_model(bundle_path)
    seq_len, n_levels = bundle["extra"]["seq_len"], bundle["extra"]["n_levels"]
    data = prepare_data(settings, n_levels=n_levels, seq_len=seq_len)
    assert data.scaler.to_dict() == bundle["scaler"]  # the windows below are the bundle's

    # the training path: each test window as SequenceDataset builds it (scaled in float64), one forward pass
    test = data.dataset("test")
    assert len(test) > 100
    with torch.no_grad():
        windows = torch.stack([test[i][0] for i in range(len(test))])
        expected = torch.softmax(model(windows), dim=1).numpy()

    frames = [pl.read_parquet(settings.paths.preprocessed_path(day)) for day in (DAY1, DAY2, DAY3)]
    table = predict(bundle_path, frames)
    ends = data.split.test
    assert table.height == data.arrays.n_rows == 3 * 1440
    minutes = table.get_column("ts").dt.epoch("ms").to_numpy() // 60_000
    np.testing.assert_array_equal(minutes[ends], data.minutes[ends])  # the same rows
    at_ends = table[ends]
    assert at_ends.get_column("has_window").all()
    np.testing.assert_allclose(_probabilities(at_ends), expected, atol=1e-5, rtol=0)
    assert at_ends.get_column("predicted").to_list() == expected.argmax(axis=1).tolist()
    # every window training could use ends on a minute with a prediction; the others lack only a label
    has_window = table.get_column("has_window").to_numpy()
    assert has_window[data.windows.ends].all()
    assert (data.targets[has_window] < 0).sum() == has_window.sum() - len(data.windows)


# ---------------------------------------------------------------------------------------------
# Days, windows, history


def test_the_table_has_one_row_a_minute_and_nulls_without_a_window(tiny_bundle, days):
    table = predict(tiny_bundle, days[1])
    assert tuple(table.columns) == OUTPUT_COLUMNS
    assert table.schema["predicted"] == pl.Int8 and table.schema["has_window"] == pl.Boolean
    assert table.get_column("ts").equals(days[1].get_column("ts"))
    with_window = table.filter(pl.col("has_window"))
    without = table.filter(~pl.col("has_window"))
    np.testing.assert_allclose(_probabilities(with_window).sum(axis=1), 1.0, atol=1e-6)
    nullable = [*PROBABILITIES, "predicted", "predicted_label"]
    assert without.height == SEQ_LEN and without.select(nullable).null_count().row(0) == (SEQ_LEN,) * 5
    assert with_window.select(nullable).null_count().row(0) == (0,) * 5
    assert with_window.get_column("predicted").to_list() == _probabilities(with_window).argmax(axis=1).tolist()
    names = ["SELL", "NEUTRAL", "BUY"]
    assert with_window.get_column("predicted_label").to_list() == [names[k] for k in with_window["predicted"]]


def test_the_day_before_gives_the_first_minutes_their_windows(tiny_bundle, days):
    alone = predict(tiny_bundle, days[1])
    # minute 0 has no mid return without the minute before, so the first window ends at minute SEQ_LEN
    assert alone.get_column("has_window").to_list() == [False] * SEQ_LEN + [True] * (1440 - SEQ_LEN)

    both = predict(tiny_bundle, days)
    assert both.height == 2 * 1440
    second = both.tail(1440)
    assert second.get_column("has_window").all()
    # where both have a window the windows are the same minutes, scaled the same way
    np.testing.assert_allclose(_probabilities(second)[SEQ_LEN:], _probabilities(alone)[SEQ_LEN:], atol=1e-6)


def test_an_invalid_minute_leaves_no_window_across_it(tiny_bundle, days):
    broken = make_day_frame(DAY2, seed=1, invalid_minutes=[600])
    has_window = predict(tiny_bundle, [days[0], broken]).tail(1440).get_column("has_window").to_numpy()
    # minute 600 has no book and 601 no mid return: windows ending 600 .. 601 + SEQ_LEN - 1 would hold them
    assert np.flatnonzero(~has_window).tolist() == list(range(600, 601 + SEQ_LEN))


def test_one_pass_gives_the_table_and_the_valid_minutes(tiny_bundle, days):
    from quantgod_assets.ml.predict import predict_with_valid, valid_minutes

    broken = make_day_frame(DAY2, seed=1, invalid_minutes=[600])
    table, valid = predict_with_valid(tiny_bundle, [days[0], broken])
    assert table.equals(predict(tiny_bundle, [days[0], broken]))
    np.testing.assert_array_equal(valid, valid_minutes([days[0], broken], N_LEVELS))
    assert not valid[1440 + 600]


def test_batches_do_not_change_the_probabilities(tiny_bundle, days):
    predictor = Predictor.load(tiny_bundle)
    whole = predict(predictor, days[1])
    small = predict(predictor, days[1], batch_size=100)  # 15 batches, the last one partial
    np.testing.assert_allclose(_probabilities(whole), _probabilities(small), atol=1e-6, rtol=0)


def test_the_predictor_holds_what_the_bundle_says(tiny_bundle):
    predictor = Predictor.load(tiny_bundle)
    with open(tiny_bundle, "rb") as handle:
        assert predictor.version == hashlib.sha256(handle.read()).hexdigest()[:12]
    assert (predictor.seq_len, predictor.n_levels) == (SEQ_LEN, N_LEVELS)
    assert predictor.class_names == ("SELL", "NEUTRAL", "BUY")
    assert not predictor.module.training and next(predictor.module.parameters()).device.type == "cpu"


# ---------------------------------------------------------------------------------------------
# Bad input


def test_a_missing_column_is_named(tiny_bundle, days):
    with pytest.raises(ValueError, match=r"bid_sz_1, imbalance_5"):
        predict(tiny_bundle, days[1].drop("bid_sz_1", "imbalance_5"))


def test_days_out_of_order_are_refused(tiny_bundle, days):
    with pytest.raises(ValueError, match="time order"):
        predict(tiny_bundle, [days[1], days[0]])


def test_a_bundle_of_another_format_or_no_bundle_is_refused(tmp_path, tiny_bundle):
    other = tmp_path / "other.pth"
    torch.save({"format": "someone-else/2", "state_dict": {}}, other)
    with pytest.raises(ValueError, match="quantgod-model/1"):
        Predictor.load(other)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(BundleError, match=f"^{garbage}: "):
        Predictor.load(garbage)
    bundle = torch.load(tiny_bundle, weights_only=True)
    del bundle["extra"]["seq_len"]
    torch.save(bundle, tmp_path / "no_seq_len.pth")
    with pytest.raises(BundleError, match="records no seq_len"):
        Predictor.load(tmp_path / "no_seq_len.pth")


# ---------------------------------------------------------------------------------------------
# quantgod predict


@pytest.fixture
def predict_env(tmp_path, monkeypatch):
    """QUANTGOD_* pointing at temp folders holding the two preprocessed days."""
    env = make_env(tmp_path, {})
    for key, value in env.env().items():
        monkeypatch.setenv(key, value)
    write_pre_days(env.preprocessed_dir(), [DAY1, DAY2])
    return env


def test_cli_predict_writes_the_day_under_the_model_version(predict_env, tiny_bundle, days):
    result = subprocess.run(
        [sys.executable, "-m", "quantgod_assets.cli", "predict", "--model", tiny_bundle, "--date", DAY2.isoformat()],
        capture_output=True, text=True, env={**os.environ, **predict_env.env()}, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    version = Predictor.load(tiny_bundle).version
    out = predict_env.data_dir / "predictions" / "BTCUSDT_linear" / version / f"{DAY2.isoformat()}.parquet"
    written = pl.read_parquet(out)
    expected = predict(tiny_bundle, days).tail(1440)  # day 1 read as history
    assert written.equals(expected)
    counts = expected.get_column("predicted_label").value_counts()
    count_of = dict(counts.iter_rows())
    classes = ", ".join(f"{name} {count_of.get(name, 0)}" for name in ("SELL", "NEUTRAL", "BUY"))
    assert result.stdout.splitlines() == [f"{DAY2}: 1440 rows, 1440 minutes with a prediction ({classes}) -> {out}"]


def test_cli_predict_out_and_no_history(predict_env, tiny_bundle, tmp_path, capsys):
    out = tmp_path / "here.parquet"
    assert cli.main(["predict", "--model", tiny_bundle, "--date", DAY2.isoformat(), "--history-days", "0",
                     "--out", str(out)]) == 0
    written = pl.read_parquet(out)
    assert written.height == 1440 and written.get_column("has_window").sum() == 1440 - SEQ_LEN
    assert capsys.readouterr().out.endswith(f" -> {out}\n")


def _error_line(capsys, argv) -> str:
    assert cli.main(argv) == cli.EXIT_BAD_INPUT
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_cli_predict_bad_input_is_one_line_and_exit_2(predict_env, tiny_bundle, tmp_path, capsys):
    day = ["--date", DAY2.isoformat()]
    missing_model = tmp_path / "nowhere.pth"
    assert _error_line(capsys, ["predict", "--model", str(missing_model), *day]) == \
        f"error: {missing_model}: no such model file"

    missing_day = predict_env.preprocessed(DAY3)
    line = _error_line(capsys, ["predict", "--model", tiny_bundle, "--date", DAY3.isoformat()])
    assert line.startswith(f"error: {missing_day}: {DAY3} is not preprocessed")

    bad_bundle = tmp_path / "bad.pth"
    bad_bundle.write_bytes(b"\x00" * 64)
    assert _error_line(capsys, ["predict", "--model", str(bad_bundle), *day]).startswith(
        f"error: {bad_bundle}: not a readable model bundle")

    day_file = predict_env.preprocessed(DAY2)
    pl.read_parquet(day_file).drop("imbalance_20").write_parquet(day_file)
    assert _error_line(capsys, ["predict", "--model", tiny_bundle, *day]) == \
        f"error: {day_file}: lacks 1 column(s) the model reads: imbalance_20"
    assert not (predict_env.data_dir / "predictions" / "BTCUSDT_linear").exists()
