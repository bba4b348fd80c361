"""The pictures (`plots`): each returns a readable PNG of about the expected size and at least
1000 px wide, draws what it says (checked on the numbers returned next to it), keeps a line of
zeros visible, and `quantgod plots --date D` writes a day's."""

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
    """Decodes `png` and checks it is roughly `width` x `height` pixels (±15 %) and at least
    1000 px wide (read back from the file)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    image = mpimg.imread(io.BytesIO(png), format="png")
    h, w = image.shape[:2]
    assert w >= plots.MIN_WIDTH_PX, (w, h)
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
    _image(png, 1100, 380)


def test_micro_price_png_none_without_prices(day_frame):
    empty = day_frame.with_columns(pl.lit(None, dtype=pl.Float64).alias("micro_price"))
    assert plots.micro_price_png(empty, DAY, "BTCUSDT") is None


def test_distribution_png():
    dist = {"counts": {"SELL": 10, "NEUTRAL": 70, "BUY": 20},
            "shares": {"SELL": 0.1, "NEUTRAL": 0.7, "BUY": 0.2}}
    _image(plots.distribution_png(dist, "labels"), 1000, 450)


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
    _image(picture.png, 1100, 500)
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
    _image(picture.png, 1500, int((2.9 * 4 + 0.8) * 100))
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
    _image(picture.png, 1500, int((2.9 + 0.8) * 100))
    scaled = picture.data["scaled"]
    assert scaled.shape == ((train & block.valid).sum(), 2)
    assert np.nanmean(scaled, axis=0) == pytest.approx([0, 0], abs=1e-6)
    assert np.nanstd(scaled, axis=0) == pytest.approx([1, 1], abs=1e-3)
    i = block.names.index("bid_sz_log_0")
    assert picture.data["mean"][0] == pytest.approx(scaler.mean[i])


def test_correlation_png(block):
    picture = plots.correlation_png(block.values, block.names, max_features=10)
    _image(picture.png, int((8.5 + 1.5) * 100), 850)
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
    _image(plots.training_curve_png(history), 1400, 550)


def _rgb(color: str) -> np.ndarray:
    from matplotlib.colors import to_rgb

    return np.array(to_rgb(color))


def test_training_curve_draws_a_zero_f1_inside_the_panel_with_the_legend_outside():
    """The complaint: BUY's F1 of 0 at every epoch lay on the x-axis, unseen."""
    history = [SimpleNamespace(epoch=e, train_loss=1.0 / e, val_loss=1.1 / e, f1_macro=0.3 + 0.02 * e,
                               f1_per_class=[0.3, 0.6, 0.0]) for e in range(1, 7)]
    fig = plots.training_curve_figure(history)
    png = plots.fig_png(fig)
    image = _image(png, 1400, 550)[:, :, :3]
    ax = fig.axes[1]
    buy = next(line for line in ax.get_lines() if line.get_label().startswith("BUY"))
    assert "0 at every epoch" in buy.get_label()
    assert list(buy.get_ydata()) == [0.0] * 6
    low, high = ax.get_ylim()
    assert low < -0.03 and high > 1.03  # 0 and 1 sit inside the panel, not on its frame
    # in pixels: the zero line is well above the panel's bottom edge (the x-axis line) ...
    height = image.shape[0]
    _, y_zero = ax.transData.transform((3, 0.0))
    assert y_zero - ax.bbox.y0 >= 10
    # ... and BUY's colour is drawn there, between the first and last epoch
    x_first, _ = ax.transData.transform((1, 0.0))
    x_last, _ = ax.transData.transform((6, 0.0))
    row = round(float(height - y_zero))
    band = image[row - 3: row + 4, int(x_first): int(x_last)]
    close = np.abs(band - _rgb(plots.F1_LINE_STYLES["BUY"]["color"])).max(axis=2) < 0.12
    assert close.any(axis=0).mean() > 0.5, close.any(axis=0).mean()  # along most of the line (dash-dot gaps)
    # no two classes share a style, and every legend sits right of its panel, over no line
    styles = {(line.get_color(), line.get_linestyle(), line.get_marker()) for line in ax.get_lines()}
    assert len(styles) == 4
    for panel in fig.axes:
        assert panel.get_legend().get_window_extent().x0 >= panel.bbox.x1


def test_confusion_png():
    _image(plots.confusion_png(np.array([[3, 1, 0], [0, 5, 1], [1, 0, 2]])), 1000, 800)


def test_backtest_equity_compounds_the_trades_and_shows_a_strategy_that_never_trades():
    start, end = dt.datetime(2025, 3, 16, 12), dt.datetime(2025, 3, 17, 0)
    curves = {
        "model": {"times": ["2025-03-16T13:00+00:00", "2025-03-16T15:30+00:00", "2025-03-16T20:00+00:00"],
                  "returns": [0.01, -0.005, 0.02]},
        "persistence": {"times": [dt.datetime(2025, 3, 16, 14), dt.datetime(2025, 3, 16, 18)],
                        "returns": [-0.01, -0.002]},
        "majority": {"times": [], "returns": []},
    }
    assert plots.equity_curve([0.01, -0.005, 0.02]) == pytest.approx([0.01, 1.01 * 0.995 - 1, 1.01 * 0.995 * 1.02 - 1])
    picture = plots.backtest_equity_png(curves, start, end, "test block")
    _image(picture.png, 1300, 600)
    assert picture.data["final"]["model"] == pytest.approx(1.01 * 0.995 * 1.02 - 1)
    assert picture.data["final"]["persistence"] == pytest.approx(0.99 * 0.998 - 1)
    assert picture.data["final"] == {**picture.data["final"], "majority": 0.0}
    assert picture.data["trades"] == {"model": 3, "persistence": 2, "majority": 0}


def test_every_picture_is_at_least_1000_px_wide(day_frame, block):
    """Read back from the PNG files: a narrow figure asked for is widened, never drawn smaller."""
    dist = {"counts": {"SELL": 1, "NEUTRAL": 1, "BUY": 1}, "shares": {"SELL": 0.3, "NEUTRAL": 0.4, "BUY": 0.3}}
    history = [SimpleNamespace(epoch=1, train_loss=1.0, val_loss=1.0, f1_macro=0.3, f1_per_class=[0, 0, 0])]
    pngs = {
        "micro_price": plots.micro_price_png(day_frame, DAY, "BTCUSDT"),
        "distribution": plots.distribution_png(dist, "x"),
        "periods": plots.label_periods_png({"2025-03-14": {"SELL": 1, "NEUTRAL": 0, "BUY": 0}}, "x").png,
        "histograms": plots.feature_histograms_png(block.values, block.names, columns=[0]).png,
        "correlation": plots.correlation_png(block.values, block.names, columns=[0, 1]).png,
        "curve": plots.training_curve_png(history),
        "confusion": plots.confusion_png(np.eye(3, dtype=int)),
        "equity": plots.backtest_equity_png({}, DAY, DAY + dt.timedelta(days=1)).png,
        "live": plots.live_performance_png([DAY], {"model": [0.0]}, [0.1], 0.2, "x"),
    }
    for name, png in pngs.items():
        assert png is not None
        width = mpimg.imread(io.BytesIO(png), format="png").shape[1]
        assert width >= plots.MIN_WIDTH_PX, (name, width)


def test_png_markdown_round_trip():
    import base64

    text = plots.png_markdown(b"\x89PNGdata", "x")
    assert text.startswith("![x](data:image/png;base64,")
    assert base64.b64decode(text.split(",", 1)[1][:-1]) == b"\x89PNGdata"


# ---------------------------------------------------------------------------------------------
# quantgod plots --date D


def _env(tmp_path: Path) -> dict[str, str]:
    return {"QUANTGOD_DATA_DIR": str(tmp_path / "data"), "QUANTGOD_LOGS_DIR": str(tmp_path / "logs"),
            "QUANTGOD_CONFIG_DIR": str(REPO / "configs"), "MPLBACKEND": "Agg"}


def _settings(tmp_path: Path, monkeypatch):
    """The settings the CLI reads in `tmp_path` (where it finds the days and writes the pictures)."""
    from quantgod_assets.settings import load_settings

    for key, value in _env(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("QUANTGOD_ML_PROFILE", raising=False)
    return load_settings()


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **_env(tmp_path)}
    env.pop("QUANTGOD_ML_PROFILE", None)
    return subprocess.run([sys.executable, "-m", "quantgod_assets.cli", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_plots_writes_the_days_pictures(tmp_path, monkeypatch):
    paths = _settings(tmp_path, monkeypatch).paths
    pre = paths.preprocessed_dir
    pre.mkdir(parents=True)
    make_day_frame(DAY, seed=1).write_parquet(pre / f"{DAY}.parquet")
    make_day_frame(DAY + dt.timedelta(days=1), seed=2).write_parquet(pre / f"{DAY + dt.timedelta(days=1)}.parquet")
    label_day_files(pre, paths.labelled_dir, DAY)  # the default labelling settings
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


def test_cli_plots_on_a_converted_generated_day_without_labels(tmp_path, monkeypatch):
    from quantgod_assets.orderbook.etl import convert_day
    from quantgod_assets.orderbook.synthetic import generate_days

    (archive,) = generate_days(DAY, 1, tmp_path / "raw", duration_s=600)
    convert_day(archive, _settings(tmp_path, monkeypatch).paths.preprocessed_path(DAY))
    done = _cli(tmp_path, "plots", "--date", DAY.isoformat())
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "logs" / "debug_plots"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"{DAY}_{n}.png" for n in ("micro_price", "feature_histograms", "feature_correlation"))
    assert "not labelled" in done.stdout


def test_cli_plots_missing_day_names_the_file(tmp_path, monkeypatch):
    done = _cli(tmp_path, "plots", "--date", "2025-03-20")
    assert done.returncode == 2
    expected = _settings(tmp_path, monkeypatch).paths.preprocessed_path(dt.date(2025, 3, 20))
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
    paths = _settings(tmp_path, monkeypatch).paths
    write_pre_days(paths.preprocessed_dir, days)
    for day in days:
        label_day_files(paths.preprocessed_dir, paths.labelled_dir, day)
    data = prepare_data(load_settings(), n_levels=5, seq_len=30)
    hist, corr = feature_pictures(data)
    _image(hist, 1500, int((2.9 * 4 + 0.8) * 100))
    side = min(max(8.5, 4.0 + 0.36 * min(31, data.n_features)), 16.0)  # correlation_png's figure, inches
    _image(corr, int((side + 1.5) * 100), int(side * 100))
    assert len(plots.png_markdown(hist)) < 400_000 and len(plots.png_markdown(corr)) < 400_000
