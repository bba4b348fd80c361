"""`write_debug_plots`: the picture set of a range of days (and of the trained model) written to
`logs/debug_plots/` from what the pipeline left on disk, and `quantgod plots --from --to`."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys

import matplotlib.image as mpimg
import pytest

from quantgod_assets import plots
from quantgod_assets.debug_plots import DayNotPreprocessedError, model_plot_data_path, write_debug_plots
from quantgod_assets.labelling import label_day_files
from quantgod_assets_tests.builders import DAY1, DAY2, make_env, write_pre_days

DAY3 = DAY2 + dt.timedelta(days=1)
DAY_PICTURES = ("micro_price", "labels_by_hour")
RANGE_PICTURES = ("labels_by_day", "feature_histograms", "feature_correlation")
MODEL_PICTURES = ("model_training_curve", "model_confusion_matrix", "model_backtest_equity")


def _environment(tmp_path, monkeypatch, days=(DAY1, DAY2, DAY3), labelled=(DAY1, DAY2, DAY3)):
    from quantgod_assets.settings import load_settings

    env = make_env(tmp_path, {})
    for key, value in env.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("QUANTGOD_ML_PROFILE", raising=False)
    settings = load_settings()
    write_pre_days(settings.paths.preprocessed_dir, days)
    for day in labelled:
        label_day_files(settings.paths.preprocessed_dir, settings.paths.labelled_dir, day)
    return env, settings


def _readable(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert mpimg.imread(path).shape[1] >= plots.MIN_WIDTH_PX


@pytest.mark.slow
def test_write_debug_plots_writes_each_day_and_the_range(tmp_path, monkeypatch):
    # DAY2 is not labelled, the day after DAY3 does not exist: both are told apart, not failed on
    _, settings = _environment(tmp_path, monkeypatch, labelled=(DAY1, DAY3))
    written = write_debug_plots(settings, DAY1, DAY3 + dt.timedelta(days=1))
    folder = settings.paths.logs_dir / "debug_plots"
    span = f"{DAY1}_{DAY3}"
    expected = {f"{DAY1}_micro_price.png", f"{DAY1}_labels_by_hour.png", f"{DAY2}_micro_price.png",
                f"{DAY3}_micro_price.png", f"{DAY3}_labels_by_hour.png",
                *(f"{span}_{name}.png" for name in RANGE_PICTURES)}
    assert {p.name for p in written} == expected  # no model trained: no model pictures
    assert sorted(p.name for p in folder.iterdir()) == sorted(expected)
    for path in written:
        assert path.parent == folder
        _readable(path)


def test_write_debug_plots_into_a_folder_and_a_range_without_days(tmp_path, monkeypatch):
    _, settings = _environment(tmp_path, monkeypatch, days=(DAY1,), labelled=(DAY1,))
    written = write_debug_plots(settings, DAY1, DAY1, tmp_path / "mine")
    # one day: named by the day, no by-day picture of a single bar
    assert sorted(p.name for p in written) == sorted(
        f"{DAY1}_{name}.png" for name in (*DAY_PICTURES, "feature_histograms", "feature_correlation"))
    assert all(p.parent == tmp_path / "mine" for p in written)
    with pytest.raises(DayNotPreprocessedError, match="is not preprocessed"):
        write_debug_plots(settings, DAY3, DAY3 + dt.timedelta(days=2))


@pytest.mark.slow
def test_cli_plots_from_to_prints_every_file(tmp_path, monkeypatch):
    env, settings = _environment(tmp_path, monkeypatch, days=(DAY1, DAY2), labelled=(DAY1, DAY2))
    done = subprocess.run([sys.executable, "-m", "quantgod_assets.cli", "plots", "--from", DAY1.isoformat(),
                           "--to", DAY2.isoformat(), "--levels", "10"], cwd=tmp_path,
                          env={**os.environ, **env.env(), "MPLBACKEND": "Agg"}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    folder = settings.paths.logs_dir / "debug_plots"
    files = sorted(folder.iterdir())
    assert len(files) == 4 + len(RANGE_PICTURES)
    for path in files:
        assert str(path) in done.stdout
    assert "no trained model" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "quantgod_assets.cli", "plots", "--from", DAY2.isoformat(),
                          "--to", DAY1.isoformat()], cwd=tmp_path, env={**os.environ, **env.env()},
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "before" in bad.stderr


@pytest.mark.slow
def test_write_debug_plots_draws_the_trained_models_pictures_from_its_plot_data(tmp_path, monkeypatch):
    """A small final model trained: its `.plots.json` holds the history, the confusion matrix and
    the backtests' trades, whose compounded return is the one the bundle reports."""
    from quantgod_assets.ml.final import train_final_model
    from quantgod_assets.ml.train import load_model

    env, settings = _environment(tmp_path, monkeypatch)
    monkeypatch.setenv("QUANTGOD_ML_PROFILE", "small")
    env.set_profile("small", max_batches_per_epoch=4, tcn_channels=8, lstm_hidden=8, epochs=1)
    from quantgod_assets.settings import load_settings

    settings = load_settings()
    settings = settings.model_copy(update={"optimization": settings.optimization.model_copy(update={"folds": 2})})
    final = train_final_model(settings, use_best_params=False, mlflow=False)

    data = json.loads(model_plot_data_path(settings.paths.model_path).read_text())
    assert [e["epoch"] for e in data["history"]] == [m.epoch for m in final.history]
    assert data["confusion"] == final.test["confusion"]
    _, bundle = load_model(settings.paths.model_path)
    model_bt = bundle["extra"]["backtest"]
    assert len(data["equity"]["model"]["returns"]) == model_bt["n_trades"]
    assert plots.backtest_equity_png(data["equity"], *data["test_period"]).data["final"]["model"] == \
        pytest.approx(model_bt["net_return"], abs=1e-9)
    assert set(data["equity"]) == set(final.backtests)  # the model and every baseline
    assert final.equity_png is not None and final.equity_png[:4] == b"\x89PNG"

    written = write_debug_plots(settings, DAY1, DAY3)
    names = {p.name for p in written}
    assert {f"{name}.png" for name in MODEL_PICTURES} <= names
    for path in written:
        _readable(path)
