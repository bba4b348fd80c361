"""How the deployed model does on the live days, next to the baselines, and whether its inputs drift.

The pure computations behind the `live_performance` asset (which reads the files and attaches the
picture): per live day the macro-F1 of the model's predictions against the realised labels, of
persistence (the label known at t, i.e. the target of t - lookahead) and of a stratified draw at
the training priors; rolling macro-F1 over a window of days (rows pooled, not daily scores
averaged, so a quiet day does not weigh as much as a busy one); and the population stability index
(PSI) of every model input against the deciles saved with the model at training (`feature_bins`).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from .metrics import confusion_matrix, metric_from_confusion

__all__ = [
    "LiveDay",
    "LiveReport",
    "feature_bins",
    "live_report",
    "psi",
    "psi_by_feature",
]

N_BINS = 10
SHARE_FLOOR = 1e-4  # an empty bin would make ln(a / e) infinite
DECILES = np.arange(1, N_BINS) * (100 / N_BINS)  # 10, 20, ..., 90 (percent)
SERIES = ("model", "persistence", "stratified")


# ---------------------------------------------------------------------------------------------
# Input drift


def feature_bins(features: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """float32 [F, 9]: the deciles of each feature over `rows` (bool mask or indices; default all),
    non-finite values ignored (NaN deciles for a feature without any finite value); saved with the
    model so live inputs can be compared with training."""
    values = np.asarray(features, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"features must be [rows, F], got shape {values.shape}")
    if rows is not None:
        values = values[np.asarray(rows)]
    values = np.where(np.isfinite(values), values, np.nan)
    edges = np.full((values.shape[1], N_BINS - 1), np.nan)
    present = np.isfinite(values).any(axis=0)  # nanpercentile warns on an all-NaN column
    if present.any():
        edges[present] = np.nanpercentile(values[:, present], DECILES, axis=0).T
    return edges.astype(np.float32)


def _kept_edges(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The edges that are not tied, and the expected share of the bins between them.

    A feature with a point mass (0 trades in a minute, a spread of one tick) has several equal
    deciles: the bins between them are empty by construction and the mass lands in one bin, which
    would read as drift on training data itself. Dropping the tied edges merges those bins, and
    the merged bin expects 10 % for each decile bin it spans, which training fills (up to ties at
    its own borders). Without ties this is the plain 10 equal bins."""
    index = np.arange(edges.size)
    values, counts = np.unique(edges, return_counts=True)
    untied = np.isin(edges, values[counts == 1])
    kept = index[untied]
    # bin k of the 10 lies between edge k - 1 and edge k; the sentinels are -inf (-1) and +inf (9)
    spans = np.diff(np.concatenate(([-1], kept, [edges.size])))
    return edges[untied], spans / N_BINS


def psi(values: np.ndarray, edges: np.ndarray) -> float:
    """Population stability index of `values` (1-D, non-finite ignored) against the 10 equal bins the
    9 `edges` define (expected 10 % each): sum((a - e) * ln(a / e)), shares floored at 1e-4.
    NaN when no finite value (or the edges are not finite). Tied edges (a point mass in training)
    merge the bins between them, see `_kept_edges`; a feature constant in training therefore has
    one bin and a PSI of 0."""
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    edges = np.asarray(edges, dtype=np.float64).ravel()
    if not values.size or not np.isfinite(edges).all():
        return math.nan
    kept, expected = _kept_edges(edges)
    # side="right": a value equal to an edge belongs to the bin above it, as for the deciles
    counts = np.bincount(np.searchsorted(kept, values, side="right"), minlength=kept.size + 1)
    actual = np.maximum(counts / values.size, SHARE_FLOOR)
    expected = np.maximum(expected, SHARE_FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def psi_by_feature(features: np.ndarray, bins: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """{name: PSI} of each column of `features` [rows, F] against its row of `bins` [F, 9]. Rows
    with any non-finite value are left out: the model cannot score them either."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[1] != len(names) or bins.shape[0] != len(names):
        raise ValueError(f"features {features.shape}, bins {bins.shape} and {len(names)} names disagree")
    finite = features[np.isfinite(features).all(axis=1)]
    return {name: psi(finite[:, k], bins[k]) for k, name in enumerate(names)}


def _finite(values: Iterable[float]) -> np.ndarray:
    array = np.asarray(list(values), dtype=np.float64)
    return array[np.isfinite(array)]


# ---------------------------------------------------------------------------------------------
# The report


@dataclass
class LiveDay:
    day: dt.date
    n: int  # minutes with both a prediction and a realised label
    model_f1: float  # that day's macro-F1 (nan when n == 0)
    persistence_f1: float
    stratified_f1: float
    psi_mean: float  # mean over features of the day's PSI against the training bins
    psi_max: float


@dataclass
class LiveReport:
    days: list[LiveDay]
    window_days: int
    # "model" / "persistence" / "stratified" -> macro-F1 per day over the rows of that day and
    # the window_days - 1 days before it (pooled)
    rolling: dict[str, list[float]]
    psi: dict[str, float]  # feature -> PSI over the last window's live rows
    psi_threshold: float

    def _last(self, series: str) -> float:
        values = self.rolling.get(series, [])
        return values[-1] if values else math.nan

    @property
    def model_below_persistence(self) -> bool:
        """The last rolling model F1 is below the last rolling persistence F1 (False without days)."""
        return bool(self._last("model") < self._last("persistence"))  # NaN compares False

    @property
    def drifted(self) -> bool:
        """The largest PSI over the last window is above `psi_threshold`."""
        values = _finite(self.psi.values())
        return bool(values.size and values.max() > self.psi_threshold)

    def _drift_warning(self) -> str:
        finite = {name: v for name, v in self.psi.items() if math.isfinite(v)}
        worst = max(finite, key=finite.__getitem__)
        more = sum(v > self.psi_threshold for v in finite.values()) - 1
        others = f" (and {more} more feature{'s' if more != 1 else ''})" if more else ""
        return (f"input drift: PSI {finite[worst]:.2f} of {worst}{others} above {self.psi_threshold:g}"
                f" over the last {self.window_days} day(s)")

    def warnings(self) -> list[str]:
        """One line per problem (an empty list when the model does what it should)."""
        out = []
        # the pooled F1 is NaN exactly when the last window has no scored minute
        if self.days and not math.isfinite(self._last("model")):
            out.append(f"no live minute with both a prediction and a label over the last {self.window_days} day(s)")
        if self.model_below_persistence:
            out.append(f"live macro-F1 {self._last('model'):.3f} over the last {self.window_days} day(s)"
                       f" is below persistence's {self._last('persistence'):.3f}")
        if self.drifted:
            out.append(self._drift_warning())
        return out

    def summary(self) -> dict[str, Any]:
        """Plain values for metadata / JSON (NaN written as None, which JSON has)."""
        return {
            "days": [d.day.isoformat() for d in self.days],
            "n": [d.n for d in self.days],
            "daily_f1": {
                "model": [_plain(d.model_f1) for d in self.days],
                "persistence": [_plain(d.persistence_f1) for d in self.days],
                "stratified": [_plain(d.stratified_f1) for d in self.days],
            },
            "psi_mean": [_plain(d.psi_mean) for d in self.days],
            "psi_max": [_plain(d.psi_max) for d in self.days],
            "window_days": self.window_days,
            "rolling": {name: [_plain(v) for v in values] for name, values in self.rolling.items()},
            "last_rolling": {name: _plain(self._last(name)) for name in self.rolling},
            "psi": {name: _plain(v) for name, v in self.psi.items()},
            "psi_threshold": self.psi_threshold,
            "model_below_persistence": self.model_below_persistence,
            "drifted": self.drifted,
            "warnings": self.warnings(),
        }


def _plain(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


@dataclass
class _Scored:
    """One day's scored minutes: the truth and the three predictions, int64 arrays of equal length."""

    y_true: np.ndarray
    predicted: dict[str, np.ndarray]

    @property
    def n(self) -> int:
        return int(self.y_true.size)


def _f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    if not y_true.size:
        return math.nan
    return metric_from_confusion("f1_macro", confusion_matrix(y_true, y_pred))


def _all_labels(labels: Mapping[dt.date, pl.DataFrame]) -> pl.DataFrame:
    """Every labelled minute given (the day before the first live day too), for persistence to
    look back across midnight."""
    frames = [frame.select("ts", pl.col("target").cast(pl.Int64)) for frame in labels.values()]
    if not frames:
        return pl.DataFrame({"ts": [], "target": []}, schema={"ts": pl.Datetime("ms", "UTC"), "target": pl.Int64})
    return pl.concat(frames).filter(pl.col("target").is_not_null()).unique("ts", keep="first")


def _scored_rows(day: dt.date, labels: Mapping[dt.date, pl.DataFrame],
                 predictions: Mapping[dt.date, pl.DataFrame]) -> pl.DataFrame:
    """(ts, target, predicted) of the day's minutes that have both, in time order."""
    if day not in labels or day not in predictions:
        return pl.DataFrame({"ts": [], "target": [], "predicted": []},
                            schema={"ts": pl.Datetime("ms", "UTC"), "target": pl.Int64, "predicted": pl.Int64})
    truth = labels[day].select("ts", pl.col("target").cast(pl.Int64))
    # the same ts type on both sides (a join on ms against us would fail)
    predicted = predictions[day].select(pl.col("ts").cast(truth.schema["ts"]), pl.col("predicted").cast(pl.Int64))
    return (predicted.join(truth, on="ts", how="inner")
            .filter(pl.col("target").is_not_null() & pl.col("predicted").is_not_null())
            .sort("ts"))


def _persistence(rows: pl.DataFrame, history: pl.DataFrame, lookahead: int, fallback: int) -> np.ndarray:
    """The realised target at ts - lookahead (known at ts: its horizon ends at ts), else `fallback`."""
    if not rows.height:
        return np.empty(0, dtype=np.int64)
    past = history.rename({"target": "known"}).with_columns(
        (pl.col("ts") + pl.duration(minutes=int(lookahead))).cast(rows.schema["ts"]).alias("ts"))
    joined = rows.select("ts").join(past, on="ts", how="left", maintain_order="left")
    return joined["known"].fill_null(fallback).to_numpy().astype(np.int64)


def _score_day(rows: pl.DataFrame, history: pl.DataFrame, lookahead: int, priors: np.ndarray,
               rng: np.random.Generator) -> _Scored:
    fallback = int(np.argmax(priors))  # the most frequent training class
    return _Scored(
        y_true=rows["target"].to_numpy().astype(np.int64),
        predicted={
            "model": rows["predicted"].to_numpy().astype(np.int64),
            "persistence": _persistence(rows, history, lookahead, fallback),
            "stratified": rng.choice(priors.size, size=rows.height, p=priors).astype(np.int64),
        },
    )


def _window(days: Sequence[dt.date], end: int, window_days: int) -> list[int]:
    """Indices of the days within `window_days` calendar days up to and including days[end]."""
    first = days[end] - dt.timedelta(days=window_days - 1)
    return [i for i in range(end + 1) if days[i] >= first]


def _pooled_f1(scored: Sequence[_Scored], series: str) -> float:
    if not scored:
        return math.nan
    y_true = np.concatenate([s.y_true for s in scored])
    return _f1(y_true, np.concatenate([s.predicted[series] for s in scored]))


def _psi_stats(values: Mapping[str, float]) -> tuple[float, float]:
    finite = _finite(values.values())
    return (float(finite.mean()), float(finite.max())) if finite.size else (math.nan, math.nan)


def _day_psi(day: dt.date, features: Mapping[dt.date, np.ndarray], bins: np.ndarray,
             names: Sequence[str]) -> tuple[float, float]:
    if day not in features:
        return math.nan, math.nan
    return _psi_stats(psi_by_feature(features[day], bins, names))


def _window_psi(days: Sequence[dt.date], features: Mapping[dt.date, np.ndarray], bins: np.ndarray,
                names: Sequence[str]) -> dict[str, float]:
    chunks = [np.asarray(features[d]) for d in days if d in features]
    if not chunks:
        return {name: math.nan for name in names}
    return psi_by_feature(np.concatenate(chunks), bins, names)


def live_report(
    days: Sequence[dt.date],
    labels: Mapping[dt.date, pl.DataFrame],
    predictions: Mapping[dt.date, pl.DataFrame],
    features: Mapping[dt.date, np.ndarray],
    feature_names: Sequence[str],
    bins: np.ndarray,
    train_priors: Sequence[float],
    lookahead: int,
    window_days: int = 7,
    psi_threshold: float = 0.25,
    seed: int = 0,
) -> LiveReport:
    """Daily and rolling macro-F1 of the model and the two baselines, and input PSI, over `days`
    (ascending). `labels` holds (ts, target) per day and may hold the day before days[0], which
    persistence looks back into; `predictions` (ts, predicted); `features` the model inputs
    [rows, F] per day. A day missing from a mapping has no scored rows / no PSI."""
    if window_days < 1:
        raise ValueError(f"window_days must be >= 1, got {window_days}")
    if list(days) != sorted(days):
        raise ValueError("days must be ascending")
    priors = np.asarray(train_priors, dtype=np.float64)
    priors = priors / priors.sum()
    bins = np.asarray(bins)
    history = _all_labels(labels)
    rng = np.random.default_rng(seed)  # one generator, drawn day by day: reproducible for a seed
    scored = [_score_day(_scored_rows(d, labels, predictions), history, lookahead, priors, rng) for d in days]
    live_days = [
        LiveDay(d, s.n, _f1(s.y_true, s.predicted["model"]), _f1(s.y_true, s.predicted["persistence"]),
                _f1(s.y_true, s.predicted["stratified"]), *_day_psi(d, features, bins, feature_names))
        for d, s in zip(days, scored)
    ]
    windows = [_window(days, i, window_days) for i in range(len(days))]
    rolling = {series: [_pooled_f1([scored[i] for i in w], series) for w in windows] for series in SERIES}
    last_window = [days[i] for i in windows[-1]] if days else []
    return LiveReport(live_days, window_days, rolling, _window_psi(last_window, features, bins, feature_names),
                      psi_threshold)
