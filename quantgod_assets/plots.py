"""The pictures: matplotlib (Agg, no display) figures rendered to small PNG bytes.

One place for every diagnostic picture the assets attach to their materializations (as base64
markdown, `png_markdown`) and `quantgod plots --date D` writes to `logs/debug_plots/`:

- `micro_price_png`: the day's micro_price series (the `preprocessed_book` preview).
- `distribution_png`: the class shares (the `label_distribution` chart).
- `label_periods` + `label_periods_png`: the class distribution by hour, day, week or month,
  as stacked bars of shares.
- `feature_histograms_png`: chosen features before and after scaling, side by side.
- `correlation_png`: the correlation matrix of chosen features.
- `training_curve_figure` / `training_curve_png`: loss and validation F1 per epoch.
- `confusion_figure` / `confusion_png`: the test confusion matrix, counts and row shares.
- `equity_curve` + `backtest_equity_png`: the cumulative net return of the model's and the
  baselines' trades over the test block, next to staying flat.
- `live_performance_png`: rolling macro-F1 against the baselines and the input drift, by live day.

Every picture is at least 1000 px wide (`MIN_WIDTH_PX`) with text of 10 pt and more at 100 dpi,
so it reads at 100 % zoom; lines that coincide (a series of zeros on an axis, a baseline equal to
the model) keep their own marker and dash style and stay inside the axis limits.

The functions that compute something return it next to the picture (`Plotted.data`), so tests
and callers check the numbers, not the pixels. Figures are `matplotlib.figure.Figure` objects
(no pyplot state): safe in worker processes and threads. This module imports neither dagster nor
torch nor anything of `ml/` (the ML code imports it, not the other way round); matplotlib is
imported when a picture is drawn.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .labelling import CLASS_NAMES

__all__ = [
    "CLASS_COLORS",
    "CLASS_NAMES",
    "MIN_WIDTH_PX",
    "Plotted",
    "backtest_equity_png",
    "confusion_figure",
    "confusion_png",
    "correlation_png",
    "default_features",
    "distribution_png",
    "equity_curve",
    "feature_histograms_png",
    "fig_png",
    "label_periods",
    "label_periods_png",
    "live_performance_png",
    "micro_price_png",
    "png_markdown",
    "training_curve_figure",
    "training_curve_png",
]

CLASS_COLORS = ("#c0392b", "#7f8c8d", "#27ae60")
DPI = 100
MIN_WIDTH_PX = 1000  # every picture is at least this wide
TITLE, LABEL, TICK, NOTE = 14, 12, 11, 10  # font sizes in points (at 100 dpi: 19 / 17 / 15 / 14 px)
PERIODS = ("hour", "day", "week", "month")
MAX_SAMPLE_ROWS = 200_000  # rows drawn for histograms and correlations (a year has 525,600)


@dataclass
class Plotted:
    """A picture and the numbers drawn in it."""

    png: bytes
    data: dict[str, Any] = field(default_factory=dict)


def _figure(width: float, height: float, dpi: int = DPI):
    """A figure at least `MIN_WIDTH_PX` wide (a narrower `width` in inches is widened, the height
    scaled with it)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    scale = max(1.0, MIN_WIDTH_PX / (width * dpi))
    return Figure(figsize=(width * scale, height * scale), dpi=dpi)


def _style(ax: Any, title: str | None = None, xlabel: str | None = None, ylabel: str | None = None,
           grid: str = "both") -> None:
    """Readable text and a light grid on one panel."""
    if title is not None:
        ax.set_title(title, fontsize=TITLE)
    if xlabel is not None:
        ax.set_xlabel(xlabel, fontsize=LABEL)
    if ylabel is not None:
        ax.set_ylabel(ylabel, fontsize=LABEL)
    ax.tick_params(labelsize=TICK)
    if grid:
        ax.grid(axis=grid, alpha=0.3, linewidth=0.6)


def _margin_ylim(ax: Any, values: Iterable[float], low: float | None = None, high: float | None = None,
                 margin: float = 0.06) -> None:
    """Y limits around every finite value with a margin, so a line at the extreme (a series of
    zeros, a share of 1) is drawn inside the panel, not on its frame. `low` / `high`: values the
    range always includes (e.g. 0 and 1 for a score)."""
    finite = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    bounds = [*finite.tolist(), *(b for b in (low, high) if b is not None)]
    lo, hi = (min(bounds), max(bounds)) if bounds else (0.0, 1.0)
    span = hi - lo if hi > lo else max(abs(hi), 1.0)
    ax.set_ylim(lo - margin * span, hi + margin * span)


def fig_png(fig: Any) -> bytes:
    """The figure as PNG bytes (at the figure's own dpi)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def png_markdown(png: bytes, alt: str = "micro_price") -> str:
    """Markdown showing the PNG inline (a data: URI): Dagster renders it in the metadata panel."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


# ---------------------------------------------------------------------------------------------
# The book


def micro_price_png(frame: Any, day: dt.date, symbol: str) -> bytes | None:
    """The day's micro_price by hour (1100 x 380 px, about 30-60 kB); None when it has no value."""
    price = frame["micro_price"].cast(float).fill_null(float("nan")).to_numpy()
    if not np.isfinite(price).any():
        return None
    hours = np.arange(len(price)) / 60.0
    fig = _figure(11, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(hours, price, linewidth=1.2, color="#1f6fb2")
    ax.set_xlim(0, 24)
    ax.set_xticks(range(0, 25, 2))
    _margin_ylim(ax, price[np.isfinite(price)].tolist())
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    _style(ax, f"{symbol} micro_price, {day} (UTC)", "hour (UTC)", "micro_price")
    fig.tight_layout(pad=0.5)
    return fig_png(fig)


# ---------------------------------------------------------------------------------------------
# Labels


def distribution_png(dist: Mapping[str, Any], title: str) -> bytes:
    """A bar chart of the class shares (`dist`: {"counts": {name: n}, "shares": {name: s}}), 1000 x 450 px."""
    shares = [100 * dist["shares"][name] for name in CLASS_NAMES]
    fig = _figure(10, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    bars = ax.bar(CLASS_NAMES, shares, color=list(CLASS_COLORS), width=0.6)
    for bar, name, share in zip(bars, CLASS_NAMES, shares):
        ax.annotate(f"{share:.1f} %  ({dist['counts'][name]:,})", (bar.get_x() + bar.get_width() / 2, share),
                    xytext=(0, 4), textcoords="offset points", ha="center", va="bottom", fontsize=NOTE + 1)
    ax.set_ylim(0, max([*shares, 1.0]) * 1.25)
    _style(ax, title, None, "% of labelled minutes", grid="y")
    fig.tight_layout(pad=0.5)
    return fig_png(fig)


def _period_key(day: dt.date | dt.datetime, period: str) -> str:
    if period == "hour":
        if not isinstance(day, dt.datetime):
            raise ValueError("period 'hour' needs times, not days")
        return f"{day:%H}h"
    day = day.date() if isinstance(day, dt.datetime) else day
    if period == "day":
        return day.isoformat()
    if period == "week":
        year, week, _ = day.isocalendar()
        return f"{year}-W{week:02d}"
    if period == "month":
        return f"{day:%Y-%m}"
    raise ValueError(f"period must be one of {PERIODS}, got {period!r}")


def label_periods(rows: Iterable[tuple[Any, Any, int]], period: str = "day") -> dict[str, dict[str, int]]:
    """Class counts per period from `(when, target, count)` rows (`target` 0/1/2 or None).

    `when` is a date, a datetime or an ISO string (the `label_distribution` query gives
    `(YYYY-MM-DD, target, n)`). Returns {period: {"SELL", "NEUTRAL", "BUY", "unlabelled": n}},
    in time order.
    """
    out: dict[str, dict[str, int]] = {}
    for when, target, count in rows:
        if isinstance(when, str):
            when = dt.datetime.fromisoformat(when) if "T" in when or " " in when else dt.date.fromisoformat(when)
        counts = out.setdefault(_period_key(when, period), {**{n: 0 for n in CLASS_NAMES}, "unlabelled": 0})
        if target is None or (isinstance(target, float) and not np.isfinite(target)) or int(target) < 0:
            counts["unlabelled"] += int(count)
        else:
            counts[CLASS_NAMES[int(target)]] += int(count)
    return dict(sorted(out.items()))


def frame_label_rows(frame: Any) -> list[tuple[dt.datetime, Any, int]]:
    """(minute, target, 1) rows of a labelled frame, for `label_periods(..., "hour")`."""
    times = frame.get_column("ts").to_list()
    targets = frame.get_column("target").to_list()
    return [(t, y, 1) for t, y in zip(times, targets)]


def label_periods_png(periods: Mapping[str, Mapping[str, int]], title: str, period: str = "day") -> Plotted:
    """Stacked bars of the class shares per period, the labelled count above each bar and the
    legend outside the bars (at least 1000 px wide, wider for many periods).

    `data`: {"periods": [...], "shares": {class: [share per period]}, "labelled": [...]}.
    """
    keys = list(periods)
    labelled = np.array([sum(periods[k][n] for n in CLASS_NAMES) for k in keys], dtype=np.int64)
    shares = {n: np.array([periods[k][n] for k in keys], dtype=np.float64) / np.maximum(labelled, 1)
              for n in CLASS_NAMES}
    width = min(max(11.0, 0.32 * len(keys) + 3.0), 20.0)
    fig = _figure(width, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(keys))
    bottom = np.zeros(len(keys))
    for name, color in zip(CLASS_NAMES, CLASS_COLORS):
        ax.bar(x, 100 * shares[name], bottom=100 * bottom, color=color, label=name, width=0.8,
               edgecolor="white", linewidth=0.5)
        bottom += shares[name]
    if len(keys) <= 40:
        for xi, n in zip(x, labelled):
            ax.annotate(f"{n:,}", (xi, 100), xytext=(0, 3), textcoords="offset points", ha="center", va="bottom",
                        fontsize=NOTE - 1 if len(keys) > 12 else NOTE, rotation=90 if len(keys) > 12 else 0)
    step = max(1, int(np.ceil(len(keys) / 31)))
    ax.set_xticks(x[::step], labels=keys[::step], rotation=90 if len(keys) > 8 else 0)
    ax.set_xlim(-0.6, len(keys) - 0.4)
    ax.set_ylim(0, 125 if len(keys) > 12 else 112)
    ax.set_yticks(range(0, 101, 25))
    _style(ax, title, period, "% of labelled minutes", grid="y")
    handles, names = ax.get_legend_handles_labels()  # top to bottom as the bars stack
    ax.legend(handles[::-1], names[::-1], fontsize=NOTE, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              frameon=False, title="class (count: labelled minutes)", title_fontsize=NOTE)
    fig.tight_layout(pad=0.5)
    return Plotted(fig_png(fig), {"periods": keys, "shares": {n: s.tolist() for n, s in shares.items()},
                                  "labelled": labelled.tolist()})


# ---------------------------------------------------------------------------------------------
# Features


# a book-level feature's name: side, what, level (`bid_px_bps_0`, `ask_sz_log_12`; see
# `ml.features.feature_names`); every other name is a row feature (mid return, spread, imbalances)
LEVEL_FEATURE = re.compile(r"^(bid|ask)_[a-z_]+_\d+$")


def default_features(names: Sequence[str], limit: int) -> list[int]:
    """Column indices worth a look: the row features (mid return, spread, micro price, imbalances)
    first, then the levels from the best one outwards (`bid_px_bps_0`, `bid_sz_log_0`, ...)."""
    row = [i for i, n in enumerate(names) if not LEVEL_FEATURE.match(n)]
    rest = [i for i, n in enumerate(names) if LEVEL_FEATURE.match(n)]
    return (row + rest)[: max(int(limit), 0)]


def _sample_rows(features: np.ndarray, rows: np.ndarray | None, limit: int, seed: int) -> np.ndarray:
    if rows is None:
        index = np.arange(features.shape[0])
    else:
        rows = np.asarray(rows)
        index = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.int64)
    if index.size > limit:
        index = np.sort(np.random.default_rng(seed).choice(index, limit, replace=False))
    return index


def _columns(features: np.ndarray, names: Sequence[str], columns: Sequence[int | str] | None,
             limit: int) -> list[int]:
    if columns is None:
        return default_features(names, limit)
    lookup = {n: i for i, n in enumerate(names)}
    return [lookup[c] if isinstance(c, str) else int(c) for c in columns]


def feature_histograms_png(
    features: np.ndarray,
    names: Sequence[str],
    scaler: Any | None = None,
    *,
    rows: np.ndarray | None = None,
    columns: Sequence[int | str] | None = None,
    max_features: int = 8,
    bins: int = 40,
    title: str = "Features before and after scaling",
    seed: int = 0,
) -> Plotted:
    """Histograms of chosen features, raw (left) and scaled (right) in pairs.

    `scaler`: anything with `mean` / `std` over all of `names` (the model's `ml.dataset.Scaler`,
    fitted on training rows); None uses the drawn rows' own mean / std (rows where the chosen
    columns are all finite; std 1 for a constant column, as the Scaler does).
    `rows`: a boolean mask or indices of the rows to draw (e.g. the training rows); at most
    200,000 are sampled. `columns`: names or indices (default: `default_features`).

    `data`: {"names", "raw" [n, k] float64, "scaled" [n, k] float64 (NaN where not finite),
    "mean", "std" (what the scaling used)}.
    """
    features = np.asarray(features)
    idx = _columns(features, names, columns, max_features)
    chosen = [names[i] for i in idx]
    sample = _sample_rows(features, rows, MAX_SAMPLE_ROWS, seed)
    columns_at = np.asarray(idx, dtype=np.intp)
    raw = features[np.ix_(sample, columns_at)].astype(np.float64) if idx else np.zeros((sample.size, 0))
    raw[~np.isfinite(raw)] = np.nan
    if scaler is None:
        finite = np.isfinite(raw).all(axis=1)
        if not finite.any():
            raise ValueError(f"no row with every one of {chosen} finite: nothing to scale")
        mean, std = raw[finite].mean(axis=0), raw[finite].std(axis=0)
        std[~(std > 1e-12)] = 1.0
    else:
        mean, std = np.asarray(scaler.mean)[idx], np.asarray(scaler.std)[idx]
    scaled = (raw - mean) / std

    k = len(idx)
    pairs_per_row = 2
    n_rows = max(1, int(np.ceil(k / pairs_per_row)))
    fig = _figure(15.0, 2.9 * n_rows + 0.8)
    for j, name in enumerate(chosen):
        for side, (values, color, what) in enumerate(((raw[:, j], "#1f6fb2", "raw"),
                                                     (scaled[:, j], "#e67e22", "scaled"))):
            ax = fig.add_subplot(n_rows, 2 * pairs_per_row, 2 * j + side + 1)
            finite = values[np.isfinite(values)]
            if finite.size:
                # a few far outliers (a jump over a gap, a new day) would squash the rest into one
                # bar: then the bins span the 0.1 ... 99.9 percentiles and the note counts the rest
                low, high = float(finite.min()), float(finite.max())
                p_low, p_high = np.percentile(finite, [0.1, 99.9])
                if p_high > p_low and high - low > 3 * (p_high - p_low):
                    low, high = float(p_low), float(p_high)
                elif not high > low:
                    low, high = low - 0.5, high + 0.5
                ax.hist(finite, bins=bins, range=(low, high), color=color, alpha=0.85)
                note = f"μ {finite.mean():.3g}\nσ {finite.std():.3g}"
                outside = int(((finite < low) | (finite > high)).sum())
                if outside:
                    note += f"\n{outside:,} outside"
            else:
                note = "no finite value"
            ax.set_title(f"{name} ({what})", fontsize=LABEL)
            ax.text(0.98, 0.95, note, transform=ax.transAxes, ha="right", va="top", fontsize=NOTE,
                    bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1.5})
            ax.tick_params(labelsize=NOTE)
            ax.locator_params(axis="x", nbins=4)
            ax.set_yticks([])
    fig.suptitle(title, fontsize=TITLE)
    height = fig.get_figheight()
    fig.tight_layout(pad=0.5, h_pad=1.0, w_pad=0.8, rect=(0, 0, 1, 1 - 0.35 / height))
    return Plotted(fig_png(fig), {"names": chosen, "raw": raw, "scaled": scaled,
                                  "mean": np.asarray(mean), "std": np.asarray(std)})


def correlation_png(
    features: np.ndarray,
    names: Sequence[str],
    *,
    rows: np.ndarray | None = None,
    columns: Sequence[int | str] | None = None,
    max_features: int = 31,
    title: str = "Feature correlation",
    seed: int = 0,
) -> Plotted:
    """The Pearson correlation matrix of chosen features over the rows where they are all finite
    (a constant feature correlates with nothing: 0 off the diagonal).

    `data`: {"names", "corr" [k, k], "rows" (how many were used)}.
    """
    features = np.asarray(features)
    idx = _columns(features, names, columns, max_features)
    chosen = [names[i] for i in idx]
    sample = _sample_rows(features, rows, MAX_SAMPLE_ROWS, seed)
    values = features[np.ix_(sample, np.asarray(idx, dtype=np.intp))].astype(np.float64)
    values = values[np.isfinite(values).all(axis=1)]
    k = len(idx)
    corr = np.eye(k)
    if values.shape[0] >= 2 and k:
        centred = values - values.mean(axis=0)
        std = centred.std(axis=0)
        live = std > 1e-12
        z = np.zeros_like(centred)
        z[:, live] = centred[:, live] / std[live]
        corr = (z.T @ z) / values.shape[0]
        np.fill_diagonal(corr, 1.0)
        corr = np.clip(corr, -1.0, 1.0)
    size = min(max(8.5, 4.0 + 0.36 * k), 16.0)
    fig = _figure(size + 1.5, size)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(corr, cmap="RdBu_r", vmin=-1, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=TICK)
    font = LABEL if k <= 12 else TICK if k <= 20 else NOTE
    ax.set_xticks(range(k), labels=chosen, rotation=90, fontsize=font)
    ax.set_yticks(range(k), labels=chosen, fontsize=font)
    if k <= 16:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{corr[i, j]:.2f}", ha="center", va="center", fontsize=NOTE if k <= 12 else NOTE - 2,
                        color="white" if abs(corr[i, j]) > 0.6 else "black")
    ax.set_title(f"{title} ({values.shape[0]:,} rows)", fontsize=TITLE)
    fig.tight_layout(pad=0.5)
    return Plotted(fig_png(fig), {"names": chosen, "corr": corr, "rows": int(values.shape[0])})


# ---------------------------------------------------------------------------------------------
# Training


# validation F1 lines: macro bold and solid; each class its colour, marker and dash, drawn over it
# with smaller markers, so a class equal to another (or all zeros, on the axis) still shows
F1_LINE_STYLES = {
    "macro": {"color": "#1f6fb2", "linewidth": 3.0, "marker": "o", "markersize": 9, "zorder": 2},
    "SELL": {"color": CLASS_COLORS[0], "linewidth": 1.8, "marker": "s", "markersize": 6, "linestyle": "--",
             "zorder": 3},
    "NEUTRAL": {"color": "#34495e", "linewidth": 1.8, "marker": "^", "markersize": 6, "linestyle": ":",
                "zorder": 3},
    "BUY": {"color": CLASS_COLORS[2], "linewidth": 1.8, "marker": "D", "markersize": 5, "linestyle": "-.",
            "zorder": 4},
}
OUTSIDE_LEGEND = {"fontsize": NOTE, "loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "frameon": False}


def _epoch_axis(ax: Any, epochs: Sequence[int]) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins=12, integer=True))
    if epochs:
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)


def training_curve_figure(history: Sequence[Any], title: str = "Training curve"):
    """Train / val loss (left) and validation F1, macro and per class (right), per epoch
    (matplotlib Figure, Agg backend; 1400 x 550 px). A class whose F1 is 0 at every epoch lies
    inside the panel (limits -0.06 ... 1.06), its markers on the 0 line; legends sit right of the
    panels, never over a line.

    `history`: `ml.train.EpochMetrics` (epoch, train_loss, val_loss, f1_macro, f1_per_class).
    """
    epochs = [int(m.epoch) for m in history]
    fig = _figure(14, 5.5)
    ax_loss = fig.add_subplot(1, 2, 1)
    train_loss = [float(m.train_loss) for m in history]
    val_loss = [float(m.val_loss) for m in history]
    ax_loss.plot(epochs, train_loss, marker="o", markersize=7, linewidth=2.2, color="#1f6fb2", label="train")
    ax_loss.plot(epochs, val_loss, marker="s", markersize=6, linewidth=2.0, linestyle="--", color="#e67e22",
                 label="validation")
    _margin_ylim(ax_loss, train_loss + val_loss)
    _epoch_axis(ax_loss, epochs)
    _style(ax_loss, "loss", "epoch", "cross-entropy")
    ax_loss.legend(**OUTSIDE_LEGEND)
    ax_f1 = fig.add_subplot(1, 2, 2)
    ax_f1.plot(epochs, [float(m.f1_macro) for m in history], label="macro", **F1_LINE_STYLES["macro"])
    for k, name in enumerate(CLASS_NAMES):
        values = [float(m.f1_per_class[k]) for m in history]
        flat = " (0 at every epoch)" if values and not any(values) else ""
        ax_f1.plot(epochs, values, label=f"{name}{flat}", clip_on=False, **F1_LINE_STYLES[name])
    _margin_ylim(ax_f1, [], low=0.0, high=1.0)
    _epoch_axis(ax_f1, epochs)
    _style(ax_f1, "validation F1", "epoch", "F1")
    ax_f1.legend(**OUTSIDE_LEGEND)
    fig.suptitle(title, fontsize=TITLE + 1)
    fig.tight_layout(pad=0.6, w_pad=1.5)
    return fig


def training_curve_png(history: Sequence[Any], title: str = "Training curve") -> bytes:
    return fig_png(training_curve_figure(history, title))


def confusion_figure(confusion: Any, class_names: Sequence[str] = CLASS_NAMES, title: str = "Test confusion matrix"):
    """A matplotlib Figure (Agg backend, no display needed; 1000 x 800 px): counts and
    row-normalised shares."""
    cm = np.asarray(confusion, dtype=np.int64)
    shares = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig = _figure(10, 8)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    bar.ax.tick_params(labelsize=TICK)
    bar.set_label("share of the true class", fontsize=LABEL)
    ax.set_xticks(range(len(class_names)), labels=list(class_names))
    ax.set_yticks(range(len(class_names)), labels=list(class_names))
    _style(ax, title, "predicted", "true", grid="")
    ax.tick_params(labelsize=LABEL)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{cm[i, j]:,}\n{shares[i, j]:.0%}", ha="center", va="center",
                    color="white" if shares[i, j] > 0.5 else "black", fontsize=TITLE)
    fig.tight_layout(pad=0.6)
    return fig


def confusion_png(confusion: Any, title: str = "Test confusion matrix") -> bytes:
    """The confusion matrix (counts and row shares) as PNG."""
    return fig_png(confusion_figure(confusion, title=title))


# ---------------------------------------------------------------------------------------------
# Backtest


def _as_datetime(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=None)
    if isinstance(value, dt.date):
        return dt.datetime.combine(value, dt.time())
    return dt.datetime.fromisoformat(str(value)).replace(tzinfo=None)


def equity_curve(trade_returns: Sequence[float]) -> np.ndarray:
    """The compounded net return after each trade: prod(1 + r) - 1 so far (as `backtest` counts it)."""
    returns = np.asarray(trade_returns, dtype=np.float64)
    return np.cumprod(1.0 + returns) - 1.0 if returns.size else np.zeros(0)


# the model bold, the baselines thinner with a dash and a marker each; flat (no trade) black
EQUITY_STYLES = {
    "model": {"color": "#1f6fb2", "linewidth": 3.0, "zorder": 4},
    "persistence": {"color": "#e67e22", "linewidth": 1.8, "linestyle": "--", "zorder": 3},
    "logistic": {"color": "#8e44ad", "linewidth": 1.8, "linestyle": "-.", "zorder": 3},
    "stratified": {"color": "#2c3e50", "linewidth": 1.8, "linestyle": ":", "zorder": 3},
    "majority": {"color": "#7f8c8d", "linewidth": 1.8, "linestyle": (0, (5, 2, 1, 2)), "zorder": 3},
}
EQUITY_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def backtest_equity_png(
    curves: Mapping[str, Mapping[str, Sequence[Any]]],
    start: Any,
    end: Any,
    title: str = "Backtest on the test block",
) -> Plotted:
    """The cumulative net return (compounded, after fees) of each signal's trades over the test
    block, as steps at each trade's exit, from 0 at `start` to `end`; a black line at 0 is
    staying flat. `curves`: {name: {"times": [exit time of each trade (datetime or ISO)],
    "returns": [net return of each trade]}}, the model first ("model") then the baselines.
    1300 x 600 px; the legend, right of the panel, gives each line's trades and final return.

    `data`: {"final": {name: final net return}, "trades": {name: n}}.
    """
    first, last = _as_datetime(start), _as_datetime(end)
    fig = _figure(13, 6)
    ax = fig.add_subplot(1, 1, 1)
    ax.axhline(0.0, color="black", linewidth=1.0, zorder=1, label="flat (no trade)")
    finals: dict[str, float] = {}
    trades: dict[str, int] = {}
    values: list[float] = [0.0]
    for k, (name, curve) in enumerate(curves.items()):
        times = [_as_datetime(t) for t in curve.get("times", [])]
        equity = 100 * equity_curve(curve.get("returns", []))
        order = np.argsort(np.asarray(times, dtype="datetime64[s]"), kind="stable")
        xs = [first, *(times[i] for i in order.tolist()), last]
        ys = [0.0, *equity.tolist(), float(equity[-1]) if equity.size else 0.0]
        if not times:  # no trade: on the flat line, its markers along the whole block tell it apart
            xs = [first + (last - first) * i / 12 for i in range(13)]
            ys = [0.0] * 13
        finals[name], trades[name] = ys[-1] / 100, len(times)
        values += ys
        style = EQUITY_STYLES.get(name, {"linewidth": 1.8, "linestyle": "--", "zorder": 3})
        every = max(1, len(xs) // 25) if times else 1
        ax.plot(xs, ys, drawstyle="steps-post", marker=EQUITY_MARKERS[k % len(EQUITY_MARKERS)],
                markersize=7 if name == "model" else 5, markevery=every, clip_on=False,
                label=f"{name}: {len(times):,} trades, {ys[-1]:+.2f} %", **style)
    _margin_ylim(ax, values, margin=0.08)
    ax.set_xlim(first, last if last > first else first + dt.timedelta(minutes=1))
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    locator = AutoDateLocator(minticks=4, maxticks=10)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    _style(ax, title, f"test block (UTC), {first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M}",
           "cumulative net return (%)")
    ax.legend(**OUTSIDE_LEGEND)
    fig.tight_layout(pad=0.6)
    return Plotted(fig_png(fig), {"final": finals, "trades": trades})


# ---------------------------------------------------------------------------------------------
# Live


# the model bold and underneath, the baselines thinner, dashed and on top with smaller markers of
# their own: a baseline equal to the model still shows (its dashes and markers inside the model's)
LIVE_LINE_STYLES = {
    "model": {"color": "#1f6fb2", "linewidth": 3.5, "marker": "o", "markersize": 10, "zorder": 2},
    "persistence": {"color": "#e67e22", "linewidth": 1.5, "marker": "s", "markersize": 5, "linestyle": "--",
                    "zorder": 3},
    "stratified": {"color": "#2c3e50", "linewidth": 1.5, "marker": "^", "markersize": 5, "linestyle": ":",
                   "zorder": 3},
}
LIVE_LEGEND = {"fontsize": 10, "loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "frameon": False}


def _date_axis(ax: Any, dates: Sequence[dt.date]) -> None:
    """Day ticks: one per day over a short run (the automatic locator would tick hours there)."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, DateFormatter, DayLocator

    if (max(dates) - min(dates)).days < 14:
        ax.xaxis.set_major_locator(DayLocator())
        ax.xaxis.set_major_formatter(DateFormatter("%b %d"))  # the year is in the axis label
    else:
        locator = AutoDateLocator(maxticks=12)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.set_xlabel(f"day (UTC), {min(dates)} to {max(dates)}", fontsize=LABEL)
    # room for the first and last bars (as datetimes: a date drops the hours of a timedelta)
    first, last = (dt.datetime.combine(d, dt.time()) for d in (min(dates), max(dates)))
    ax.set_xlim(first - dt.timedelta(hours=14), last + dt.timedelta(hours=14))


def live_performance_png(
    days: Sequence[dt.date],
    rolling: Mapping[str, Sequence[float]],
    psi_mean: Sequence[float],
    psi_threshold: float,
    title: str,
) -> bytes:
    """Rolling macro-F1 of the model and its baselines (top) and the daily mean input PSI with the
    drift threshold (bottom), by live day; 1100 px wide, fonts of 10 pt and more."""
    fig = _figure(11, 6.5, dpi=100)
    ax_f1 = fig.add_subplot(2, 1, 1)
    ax_psi = fig.add_subplot(2, 1, 2, sharex=ax_f1)
    dates = list(days)
    every = max(1, len(dates) // 40)  # a marker a day drowns a long run; the dashes still tell lines apart
    for name, values in rolling.items():
        style = LIVE_LINE_STYLES.get(name, {"linewidth": 1.5, "marker": "D", "markersize": 5, "zorder": 3})
        ax_f1.plot(dates, np.asarray(values, dtype=np.float64), label=name, markevery=every, **style)
    _margin_ylim(ax_f1, [], low=0.0, high=1.0)  # a score of 0 or 1 stays off the frame
    ax_f1.set_ylabel("rolling macro-F1", fontsize=LABEL)
    ax_f1.legend(**LIVE_LEGEND)  # right of the panels: never over a line or a bar
    ax_f1.set_title(title, fontsize=TITLE)
    psi = np.asarray(psi_mean, dtype=np.float64)
    colors = np.where(psi > psi_threshold, "#c0392b", "#1f6fb2")  # a drifted day stands out
    ax_psi.bar(dates, np.nan_to_num(psi), width=0.8, color=colors)
    ax_psi.axhline(psi_threshold, color="black", linestyle="--", linewidth=1.5, zorder=3,
                   label=f"threshold {psi_threshold:g}")
    ax_psi.set_ylim(0, 1.15 * max(psi_threshold, float(np.nanmax(psi, initial=0.0))))
    ax_psi.set_ylabel("mean input PSI", fontsize=LABEL)
    ax_psi.legend(**LIVE_LEGEND)
    if not dates:
        ax_f1.text(0.5, 0.5, "no live days yet", transform=ax_f1.transAxes, ha="center", fontsize=12)
        ax_psi.set_xticks([])
    else:
        _date_axis(ax_psi, dates)
    for ax in (ax_f1, ax_psi):
        ax.tick_params(labelsize=10)
        ax.grid(alpha=0.3, linewidth=0.6)
    ax_f1.tick_params(labelbottom=False)
    fig.tight_layout()
    return fig_png(fig)
