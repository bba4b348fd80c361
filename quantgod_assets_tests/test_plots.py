"""The pictures (`plots`): each returns a readable PNG of about the expected size, draws what it
says (checked on the numbers returned next to it), and `quantgod plots --date D` writes a day's."""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import matplotlib.image as mpimg
import numpy as np
import polars as pl
import pytest

from quantgod_assets import plots
from quantgod_assets.labelling import label_day_files, label_suffix
from quantgod_assets.ml.dataset import Scaler
from quantgod_assets.ml.features import frame_features
from quantgod_assets_tests.builders import make_day_frame

DAY = dt.date(2025, 3, 14)
REPO = Path(__file__).resolve().parent.parent


def _image(png: bytes, width: int, height: int) -> np.ndarray:
    """Decodes `png` and checks it is roughly `width` x `height` pixels (±15 %)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    image = mpimg.imread(io.BytesIO(png), format="png")
    h, w = image.shape[:2]
    assert abs(w - width) <= 0.15 * width and abs(h - height) <= 0.15 * height, (w, h)
    assert image.std() > 0.01  # something was drawn, not a blank canvas
    return image


@pytest.fixture(scope="module")
def day_frame() -> pl.DataFrame:
    return make_day_frame(DAY, seed=3)


@pytest.fixture(scope="module")
def block(day_frame):
    return frame_features(day_frame, 5)


def test_micro_price_png(day_frame):
    png = plots.micro_price_png(day_frame, DAY, "BTCUSDT")
    _image(png, 6 * 72, int(1.8 * 72))


def test_micro_price_png_none_without_prices(day_frame):
    empty = day_frame.with_columns(pl.lit(None, dtype=pl.Float64).alias("micro_price"))
    assert plots.micro_price_png(empty, DAY, "BTCUSDT") is None


def test_distribution_png():
    dist = {"counts": {"SELL": 10, "NEUTRAL": 70, "BUY": 20},
            "shares": {"SELL": 0.1, "NEUTRAL": 0.7, "BUY": 0.2}}
    _image(plots.distribution_png(dist, "labels"), 4 * 72, int(2.2 * 72))


def test_label_periods_by_day_week_month():
    rows = [("2025-03-14", 0, 5), ("2025-03-14", 1, 10), ("2025-03-14", None, 3),
            ("2025-03-15", 2, 4), ("2025-03-17", 1, 6)]  # 03-17 is a Monday: another ISO week
    by_day = plots.label_periods(rows, "day")
    assert list(by_day) == ["2025-03-14", "2025-03-15", "2025-03-17"]
    assert by_day["2025-03-14"] == {"SELL": 5, "NEUTRAL": 10, "BUY": 0, "unlabelled": 3}
    by_week = plots.label_periods(rows, "week")
    assert list(by_week) == ["2025-W11", "2025-W12"]
    assert by_week["2025-W11"]["BUY"] == 4 and by_week["2025-W12"]["NEUTRAL"] == 6
    assert plots.label_periods(rows, "month")["2025-03"]["NEUTRAL"] == 16
    with pytest.raises(ValueError, match="period"):
        plots.label_periods(rows, "fortnight")


def test_label_periods_png_stacked_shares():
    periods = {"2025-03-14": {"SELL": 5, "NEUTRAL": 10, "BUY": 5, "unlabelled": 3},
               "2025-03-15": {"SELL": 0, "NEUTRAL": 4, "BUY": 0, "unlabelled": 0}}
    picture = plots.label_periods_png(periods, "labels by day", "day")
    _image(picture.png, 4 * 72, int(2.6 * 72))
    assert picture.data["labelled"] == [20, 4]
    assert picture.data["shares"]["SELL"] == pytest.approx([0.25, 0.0])
    totals = np.sum([picture.data["shares"][n] for n in plots.CLASS_NAMES], axis=0)
    assert totals == pytest.approx([1.0, 1.0])  # each bar stacks to 100 %


def test_label_periods_by_hour_from_a_labelled_frame(day_frame):
    frame = day_frame.select("ts").with_columns(
        pl.Series("target", ([0, 1, 2, None] * 360)[:1440], dtype=pl.Int8))
    periods = plots.label_periods(plots.frame_label_rows(frame), "hour")
    assert len(periods) == 24 and next(iter(periods)) == "00h"
    assert periods["00h"] == {"SELL": 15, "NEUTRAL": 15, "BUY": 15, "unlabelled": 15}


def test_feature_histograms_scaled_are_centred(block):
    picture = plots.feature_histograms_png(block.values, block.names, max_features=8)
    _image(picture.png, 9 * 72, int((1.55 * 4 + 0.5) * 72))
    data = picture.data
    assert len(data["names"]) == 8 and data["raw"].shape == data["scaled"].shape == (1440, 8)
    assert data["names"][:3] == ["mid_logret_bps", "spread_bps", "micro_bps"]  # the row features first
    scaled = data["scaled"]
    live = np.nanstd(data["raw"], axis=0) > 1e-9  # a constant feature stays 0 after scaling
    # fitted on the rows where all 8 are finite, drawn wherever each is (row 0 has no mid return)
    assert np.nanmean(scaled, axis=0) == pytest.approx(np.zeros(8), abs=1e-2)
    assert np.nanstd(scaled[:, live], axis=0) == pytest.approx(np.ones(live.sum()), abs=1e-2)
    # the raw ones are not: the mid return spreads over bps, the spread is a tiny constant-ish share
    assert np.abs(np.nanstd(data["raw"][:, live], axis=0) - 1).max() > 0.5


def test_feature_histograms_with_a_given_scaler_and_rows(block):
    train = np.zeros(block.values.shape[0], dtype=bool)
    train[:1000] = True
    scaler = Scaler.fit(block.values, train & block.valid, block.names)
    picture = plots.feature_histograms_png(block.values, block.names, scaler, rows=train & block.valid,
                                           columns=["bid_sz_log_0", "ask_sz_log_1"])
    _image(picture.png, 9 * 72, int((1.55 + 0.5) * 72))
    scaled = picture.data["scaled"]
    assert scaled.shape == ((train & block.valid).sum(), 2)
    assert np.nanmean(scaled, axis=0) == pytest.approx([0, 0], abs=1e-6)
    assert np.nanstd(scaled, axis=0) == pytest.approx([1, 1], abs=1e-3)
    i = block.names.index("bid_sz_log_0")
    assert picture.data["mean"][0] == pytest.approx(scaler.mean[i])


def test_correlation_png(block):
    picture = plots.correlation_png(block.values, block.names, max_features=10)
    _image(picture.png, int((3 + 2.2 + 0.8) * 72), int((3 + 2.2) * 72))
    corr = picture.data["corr"]
    assert corr.shape == (10, 10)
    assert np.diag(corr) == pytest.approx(np.ones(10))
    assert corr == pytest.approx(corr.T)
    assert np.all(np.abs(corr) <= 1.0)
    names = picture.data["names"]
    # make_day_frame copies one imbalance into all four columns
    assert corr[names.index("imbalance_1"), names.index("imbalance_5")] == pytest.approx(1.0)


def test_training_curve_png():
    history = [SimpleNamespace(epoch=e, train_loss=1.0 / e, val_loss=1.1 / e, f1_macro=0.3 + 0.1 * e,
                               f1_per_class=[0.2, 0.5, 0.3]) for e in (1, 2, 3)]
    _image(plots.training_curve_png(history), 750, 340)


def test_confusion_png():
    _image(plots.confusion_png(np.array([[3, 1, 0], [0, 5, 1], [1, 0, 2]])), 480, 420)


def test_png_markdown_round_trip():
    import base64

    text = plots.png_markdown(b"\x89PNGdata", "x")
    assert text.startswith("![x](data:image/png;base64,")
    assert base64.b64decode(text.split(",", 1)[1][:-1]) == b"\x89PNGdata"


# ---------------------------------------------------------------------------------------------
# quantgod plots --date D


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "QUANTGOD_DATA_DIR": str(tmp_path / "data"), "QUANTGOD_LOGS_DIR": str(tmp_path / "logs"),
           "QUANTGOD_CONFIG_DIR": str(REPO / "configs"), "MPLBACKEND": "Agg"}
    env.pop("QUANTGOD_ML_PROFILE", None)
    return subprocess.run([sys.executable, "-m", "quantgod_assets.cli", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_plots_writes_the_days_pictures(tmp_path):
    pre = tmp_path / "data" / "L2" / "pre_processed"
    pre.mkdir(parents=True)
    make_day_frame(DAY, seed=1).write_parquet(pre / f"{DAY}.parquet")
    make_day_frame(DAY + dt.timedelta(days=1), seed=2).write_parquet(pre / f"{DAY + dt.timedelta(days=1)}.parquet")
    label_day_files(pre, tmp_path / "data" / "L2" / "labelled", DAY)  # the default labelling settings
    assert label_suffix() == "SELL_0004_BUY_0008_1h"

    done = _cli(tmp_path, "plots", "--date", DAY.isoformat(), "--levels", "10")
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "logs" / "debug_plots"
    names = ("micro_price", "labels_by_hour", "feature_histograms", "feature_correlation")
    for name in names:
        path = folder / f"{DAY}_{name}.png"
        assert path.is_file(), done.stdout
        assert path.read_bytes()[:4] == b"\x89PNG"
        assert str(path) in done.stdout
        mpimg.imread(path)

    other = tmp_path / "elsewhere"
    done = _cli(tmp_path, "plots", "--date", DAY.isoformat(), "--levels", "10", "--out", str(other))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in other.iterdir()) == sorted(f"{DAY}_{n}.png" for n in names)


def test_cli_plots_on_a_converted_generated_day_without_labels(tmp_path):
    from quantgod_assets.orderbook.etl import convert_day
    from quantgod_assets.orderbook.synthetic import generate_days

    (archive,) = generate_days(DAY, 1, tmp_path / "raw", duration_s=600)
    convert_day(archive, tmp_path / "data" / "L2" / "pre_processed" / f"{DAY}.parquet")
    done = _cli(tmp_path, "plots", "--date", DAY.isoformat())
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "logs" / "debug_plots"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"{DAY}_{n}.png" for n in ("micro_price", "feature_histograms", "feature_correlation"))
    assert "not labelled" in done.stdout


def test_cli_plots_missing_day_names_the_file(tmp_path):
    done = _cli(tmp_path, "plots", "--date", "2025-03-20")
    assert done.returncode == 2
    expected = tmp_path / "data" / "L2" / "pre_processed" / "2025-03-20.parquet"
    assert str(expected) in done.stderr and "not preprocessed" in done.stderr
    assert not (tmp_path / "logs" / "debug_plots").exists()


def test_cli_generate_reports_progress_and_matches_generate_days(tmp_path):
    from quantgod_assets.orderbook.synthetic import generate_days

    done = _cli(tmp_path, "generate", "--start", DAY.isoformat(), "--days", "2", "--out", "cli",
                "--duration-s", "60", "--seed", "5")
    assert done.returncode == 0, done.stderr
    # not a terminal: plain lines, one per day here (each is 50 %), no carriage return
    lines = done.stderr.splitlines()
    assert [line.split(" (")[0] for line in lines] == ["generate: 1/2", "generate: 2/2"]
    assert "\r" not in done.stderr
    expected = generate_days(DAY, 2, tmp_path / "lib", duration_s=60, seed=5)
    for path in expected:
        assert (tmp_path / "cli" / path.relative_to(tmp_path / "lib")).read_bytes() == path.read_bytes()


def test_cli_generate_signal_zero_writes_null_days_and_every_option_says_its_default(tmp_path, capsys):
    from quantgod_assets.cli import build_parser, main
    from quantgod_assets.orderbook.synthetic import generate_days

    done = _cli(tmp_path, "generate", "--start", DAY.isoformat(), "--days", "2", "--out", "cli",
                "--duration-s", "60", "--rate-ms", "1000", "--seed", "4", "--signal", "0")
    assert done.returncode == 0, done.stderr
    # seed 4 opens in a drifting regime (in the flat one, a minute's bytes are the same at any signal)
    null = generate_days(DAY, 2, tmp_path / "null", duration_s=60, rate_ms=1000, seed=4, signal=0.0)
    default = generate_days(DAY, 2, tmp_path / "default", duration_s=60, rate_ms=1000, seed=4)
    for path, other in zip(null, default, strict=True):
        written = (tmp_path / "cli" / path.relative_to(tmp_path / "null")).read_bytes()
        assert written == path.read_bytes() and written != other.read_bytes()  # signal 0, not the default

    # a newcomer's complaint: the options had no help text and no defaults
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for command in ("generate", "demo"):
        parser = subparsers.choices[command]
        for action in parser._actions[1:]:  # [0] is --help
            text = action.help or ""
            assert "(default: " in text or "(required)" in text, (command, action.dest)
    shown = " ".join(subparsers.choices["generate"].format_help().split())
    assert "--signal FLOAT" in shown and "0 NULL data" in shown and "(default: 1.0)" in shown

    assert main(["generate", "--start", DAY.isoformat(), "--out", str(tmp_path / "bad"), "--signal", "-1"]) == 2
    assert capsys.readouterr().err == "error: --signal must be a number >= 0, got -1.0\n"
    assert not (tmp_path / "bad").exists()


def test_model_feature_pictures_use_the_training_scaler(tmp_path, monkeypatch):
    """What the `model` asset attaches: histograms with the model's scaler, and the correlations."""
    from quantgod_assets.ml.data import prepare_data
    from quantgod_assets.ml.final import feature_pictures
    from quantgod_assets.settings import load_settings
    from quantgod_assets_tests.builders import write_pre_days

    days = [DAY + dt.timedelta(days=k) for k in range(3)]
    pre = tmp_path / "data" / "L2" / "pre_processed"
    write_pre_days(pre, days)
    for day in days:
        label_day_files(pre, tmp_path / "data" / "L2" / "labelled", day)
    monkeypatch.setenv("QUANTGOD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("QUANTGOD_CONFIG_DIR", str(REPO / "configs"))
    monkeypatch.delenv("QUANTGOD_ML_PROFILE", raising=False)
    data = prepare_data(load_settings(), n_levels=5, seq_len=30)
    hist, corr = feature_pictures(data)
    _image(hist, 9 * 72, int((1.55 * 4 + 0.5) * 72))
    side = 3.0 + 0.22 * min(31, data.n_features)  # correlation_png's figure: inches at 72 dpi
    _image(corr, int((side + 0.8) * 72), int(side * 72))
    assert len(plots.png_markdown(hist)) < 120_000 and len(plots.png_markdown(corr)) < 120_000
