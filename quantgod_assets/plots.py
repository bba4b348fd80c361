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
    "Plotted",
    "confusion_figure",
    "confusion_png",
    "correlation_png",
    "default_features",
    "distribution_png",
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
PERIODS = ("hour", "day", "week", "month")
MAX_SAMPLE_ROWS = 200_000  # rows drawn for histograms and correlations (a year has 525,600)


@dataclass
class Plotted:
    """A picture and the numbers drawn in it."""

    png: bytes
    data: dict[str, Any] = field(default_factory=dict)


def _figure(width: float, height: float, dpi: int = 72):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=dpi)


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
    """A small PNG of the day's micro_price by hour (about 10-20 kB); None when it has no value."""
    price = frame["micro_price"].cast(float).fill_null(float("nan")).to_numpy()
    if not np.isfinite(price).any():
        return None
    hours = np.arange(len(price)) / 60.0
    fig = _figure(6, 1.8)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(hours, price, linewidth=0.8, color="#1f6fb2")
    ax.set_xlim(0, 24)
    ax.set_xticks(range(0, 25, 3))
    ax.set_xlabel("hour (UTC)", fontsize=7)
    ax.set_title(f"{symbol} micro_price {day}", fontsize=8)
    ax.tick_params(labelsize=6)
    ax.grid(alpha=0.3, linewidth=0.5)
    fig.tight_layout(pad=0.3)
    return fig_png(fig)


# ---------------------------------------------------------------------------------------------
# Labels


def distribution_png(dist: Mapping[str, Any], title: str) -> bytes:
    """A small bar chart of the class shares (`dist`: {"counts": {name: n}, "shares": {name: s}})."""
    shares = [100 * dist["shares"][name] for name in CLASS_NAMES]
    fig = _figure(4, 2.2)
    ax = fig.add_subplot(1, 1, 1)
    bars = ax.bar(CLASS_NAMES, shares, color=list(CLASS_COLORS))
    for bar, name, share in zip(bars, CLASS_NAMES, shares):
        ax.annotate(f"{share:.1f}%\n{dist['counts'][name]:,}", (bar.get_x() + bar.get_width() / 2, share),
                    ha="center", va="bottom", fontsize=6)
    ax.set_ylim(0, max([*shares, 1.0]) * 1.3)
    ax.set_ylabel("% of labelled minutes", fontsize=7)
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(axis="y", alpha=0.3, linewidth=0.5)
    fig.tight_layout(pad=0.3)
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
    """Stacked bars of the class shares per period, the labelled count on top of each bar.

    `data`: {"periods": [...], "shares": {class: [share per period]}, "labelled": [...]}.
    """
    keys = list(periods)
    labelled = np.array([sum(periods[k][n] for n in CLASS_NAMES) for k in keys], dtype=np.int64)
    shares = {n: np.array([periods[k][n] for k in keys], dtype=np.float64) / np.maximum(labelled, 1)
              for n in CLASS_NAMES}
    width = min(max(4.0, 0.28 * len(keys) + 1.8), 12.0)
    fig = _figure(width, 2.6)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(keys))
    bottom = np.zeros(len(keys))
    for name, color in zip(CLASS_NAMES, CLASS_COLORS):
        ax.bar(x, 100 * shares[name], bottom=100 * bottom, color=color, label=name, width=0.8)
        bottom += shares[name]
    if len(keys) <= 40:
        for xi, n in zip(x, labelled):
            ax.annotate(f"{n:,}", (xi, 100), ha="center", va="bottom", fontsize=5, rotation=90 if len(keys) > 12 else 0)
    step = max(1, int(np.ceil(len(keys) / 24)))
    ax.set_xticks(x[::step], labels=keys[::step], rotation=90 if len(keys) > 8 else 0, fontsize=6)
    ax.set_xlim(-0.6, len(keys) - 0.4)
    ax.set_ylim(0, 118)
    ax.set_yticks(range(0, 101, 25))
    ax.set_ylabel("% of labelled minutes", fontsize=7)
    ax.set_xlabel(period, fontsize=7)
    ax.tick_params(axis="y", labelsize=6)
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=6, ncol=3, loc="upper right", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout(pad=0.3)
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
    fig = _figure(9.0, 1.55 * n_rows + 0.5)
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
                note = f"μ {finite.mean():.3g}  σ {finite.std():.3g}"
                outside = int(((finite < low) | (finite > high)).sum())
                if outside:
                    note += f"\n{outside:,} outside"
            else:
                note = "no finite value"
            ax.set_title(f"{name} ({what})", fontsize=6.5)
            ax.text(0.98, 0.95, note, transform=ax.transAxes, ha="right", va="top", fontsize=5.5)
            ax.tick_params(labelsize=5)
            ax.set_yticks([])
    fig.suptitle(title, fontsize=8)
    height = fig.get_figheight()
    fig.tight_layout(pad=0.4, h_pad=0.6, w_pad=0.4, rect=(0, 0, 1, 1 - 0.22 / height))
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
    size = min(3.0 + 0.22 * k, 10.0)
    fig = _figure(size + 0.8, size)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(corr, cmap="RdBu_r", vmin=-1, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=6)
    font = 7 if k <= 12 else 5.5
    ax.set_xticks(range(k), labels=chosen, rotation=90, fontsize=font)
    ax.set_yticks(range(k), labels=chosen, fontsize=font)
    if k <= 12:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{corr[i, j]:.2f}", ha="center", va="center", fontsize=5.5,
                        color="white" if abs(corr[i, j]) > 0.6 else "black")
    ax.set_title(f"{title} ({values.shape[0]:,} rows)", fontsize=8)
    fig.tight_layout(pad=0.4)
    return Plotted(fig_png(fig), {"names": chosen, "corr": corr, "rows": int(values.shape[0])})


# ---------------------------------------------------------------------------------------------
# Training


def training_curve_figure(history: Sequence[Any], title: str = "Training curve"):
    """Train / val loss and val F1 macro per epoch (matplotlib Figure, Agg backend).

    `history`: `ml.train.EpochMetrics` (epoch, train_loss, val_loss, f1_macro, f1_per_class).
    """
    epochs = [m.epoch for m in history]
    fig = _figure(7.5, 3.4, dpi=100)
    ax_loss = fig.add_subplot(1, 2, 1)
    ax_loss.plot(epochs, [m.train_loss for m in history], marker="o", label="train loss")
    ax_loss.plot(epochs, [m.val_loss for m in history], marker="o", label="val loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_title("loss")
    ax_loss.legend()
    ax_f1 = fig.add_subplot(1, 2, 2)
    ax_f1.plot(epochs, [m.f1_macro for m in history], marker="o", color="tab:green", label="val F1 macro")
    for k, name in enumerate(("sell", "neutral", "buy")):
        ax_f1.plot(epochs, [m.f1_per_class[k] for m in history], linestyle="--", linewidth=1, label=f"F1 {name}")
    ax_f1.set_xlabel("epoch")
    ax_f1.set_ylim(0, 1)
    ax_f1.set_title("validation F1")
    ax_f1.legend(fontsize=7)
    for ax in (ax_loss, ax_f1):
        ax.set_xticks(epochs)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def training_curve_png(history: Sequence[Any], title: str = "Training curve") -> bytes:
    return fig_png(training_curve_figure(history, title))


def confusion_figure(confusion: Any, class_names: Sequence[str] = CLASS_NAMES, title: str = "Test confusion matrix"):
    """A matplotlib Figure (Agg backend, no display needed): counts and row-normalised shares."""
    cm = np.asarray(confusion, dtype=np.int64)
    shares = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig = _figure(4.8, 4.2, dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(len(class_names)), labels=list(class_names))
    ax.set_yticks(range(len(class_names)), labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{cm[i, j]:,}\n{shares[i, j]:.0%}", ha="center", va="center",
                    color="white" if shares[i, j] > 0.5 else "black", fontsize=8)
    fig.tight_layout()
    return fig


def confusion_png(confusion: Any, title: str = "Test confusion matrix") -> bytes:
    """The confusion matrix (counts and row shares) as PNG."""
    return fig_png(confusion_figure(confusion, title=title))


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
    ax.set_xlabel(f"day (UTC), {min(dates)} to {max(dates)}", fontsize=11)
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
    ax_f1.set_ylim(0, 1)
    ax_f1.set_ylabel("rolling macro-F1", fontsize=11)
    ax_f1.legend(**LIVE_LEGEND)  # right of the panels: never over a line or a bar
    ax_f1.set_title(title, fontsize=13)
    psi = np.asarray(psi_mean, dtype=np.float64)
    colors = np.where(psi > psi_threshold, "#c0392b", "#1f6fb2")  # a drifted day stands out
    ax_psi.bar(dates, np.nan_to_num(psi), width=0.8, color=colors)
    ax_psi.axhline(psi_threshold, color="black", linestyle="--", linewidth=1.5, zorder=3,
                   label=f"threshold {psi_threshold:g}")
    ax_psi.set_ylim(0, 1.15 * max(psi_threshold, float(np.nanmax(psi, initial=0.0))))
    ax_psi.set_ylabel("mean input PSI", fontsize=11)
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
