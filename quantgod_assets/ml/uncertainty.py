"""Moving-block bootstrap intervals for time-ordered samples, in plain numpy.

Neighbouring windows share almost all of their label horizon (60 minutes by default), so their
outcomes are strongly correlated: an i.i.d. bootstrap treats n correlated samples as n independent
ones and returns intervals that are too narrow. The moving-block bootstrap resamples runs of
`block` consecutive samples instead, which keeps the correlation inside each block; a block about
as long as the label horizon (in samples) covers the overlap.

    interval = metric_interval(y_true, y_pred, "f1_macro", block=60)
    edge = difference_interval(y_true, model_pred, baseline_pred, block=60)
    print(verdict("edge over persistence", edge))  # edge over persistence: +0.052 [-0.081, +0.190]: not significant

Memory: the resampled indices of all resamples at once would be n × resamples int64 (80,000
windows × 1000 resamples = 640 MB), so the interval functions draw and reduce them `chunk`
resamples at a time. The draws are uniform doubles taken in order from one generator, so the
result does not depend on the chunk size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from .metrics import metric_from_confusion

__all__ = [
    "Interval",
    "block_bootstrap_indices",
    "compounded_return_interval",
    "difference_interval",
    "is_edge",
    "iter_block_bootstrap",
    "mean_interval",
    "metric_interval",
    "verdict",
]

N_CLASSES = 3
# indices per chunk when no chunk size is given: 4 M int64 = 32 MB, plus the gathered values
CHUNK_ELEMENTS = 4_000_000
# fewer samples than this many blocks carry too few independent stretches for a percentile
# interval to mean anything (with one block every resample is the sample itself): no interval then
MIN_BLOCKS = 10


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap percentile interval at `confidence`."""

    estimate: float
    low: float
    high: float
    confidence: float
    note: str = ""  # why there is no interval (low and high NaN), e.g. "50 samples < 10 blocks of 60"

    @property
    def known(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def above(self, x: float) -> bool:
        """The whole interval lies above `x`."""
        return self.low > x

    @property
    def width(self) -> float:
        return self.high - self.low

    def format(self, signed: bool = False, digits: int = 3) -> str:
        """`0.452 [0.401, 0.498]`, or `+0.052 [-0.081, +0.190]` with `signed` (for differences)."""
        spec = f"{'+' if signed else ''}.{digits}f"
        if not self.known:
            return f"{self.estimate:{spec}} [n/a]"
        return f"{self.estimate:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"

    def to_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "confidence": self.confidence}


def is_edge(interval: Interval) -> bool:
    """A difference is an edge only when its whole interval is above zero."""
    return interval.low > 0


def verdict(name: str, interval: Interval) -> str:
    """One line: `edge over persistence: +0.052 [-0.081, +0.190]: not significant`."""
    if not interval.known:
        return f"{name}: {interval.format(signed=True)}: n/a ({interval.note or 'no interval'})"
    if interval.low > 0:
        word = "significant"
    elif interval.high < 0:
        word = "significantly worse"
    else:
        word = "not significant"
    return f"{name}: {interval.format(signed=True)}: {word}"


# --- resampled indices -----------------------------------------------------------------------


def _block_length(n: int, block: int) -> int:
    """At least 1; at most n (a block of n or more is the whole series, see below)."""
    return int(min(max(int(block), 1), n))


def iter_block_bootstrap(
    n: int, block: int, resamples: int, rng: np.random.Generator, chunk: int | None = None
) -> Iterator[np.ndarray]:
    """Yields int64 arrays [<= chunk, n] of resampled indices, `resamples` rows in all.

    Each row concatenates blocks of `block` consecutive indices that start at uniformly random
    positions in 0 .. n - block (moving blocks), cut to length n. `block >= n` leaves one
    possible start (0), so every row is 0 .. n - 1 and the interval collapses to the estimate:
    a series no longer than one correlated stretch carries no information on its own spread.
    """
    if n < 1:
        raise ValueError("no samples to resample")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    block = _block_length(n, block)
    n_blocks = -(-n // block)  # ceil
    n_starts = n - block + 1
    if chunk is None:
        chunk = max(1, CHUNK_ELEMENTS // n)
    offsets = np.arange(block, dtype=np.int64)
    for first in range(0, resamples, chunk):
        count = min(chunk, resamples - first)
        # doubles, not rng.integers: one draw each, in order, so chunking never shifts the stream
        starts = (rng.random((count, n_blocks)) * n_starts).astype(np.int64)
        np.minimum(starts, n_starts - 1, out=starts)  # guards the (rounding) edge u * n_starts == n_starts
        yield (starts[:, :, None] + offsets).reshape(count, n_blocks * block)[:, :n]


def block_bootstrap_indices(n: int, block: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """int64 [resamples, n]: all resampled indices at once (see `iter_block_bootstrap`; for
    large n × resamples use that, or the interval functions, which work chunk by chunk)."""
    return np.concatenate(list(iter_block_bootstrap(n, block, resamples, rng, chunk=resamples)))


# --- intervals -------------------------------------------------------------------------------


def _percentile_interval(estimate: float, statistics: np.ndarray, confidence: float) -> Interval:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(statistics, [tail, 1.0 - tail])
    return Interval(float(estimate), float(low), float(high), float(confidence))


def _resampled_statistics(
    n: int,
    statistic: Callable[[np.ndarray], np.ndarray],
    block: int,
    resamples: int,
    seed: int,
    chunk: int | None,
) -> np.ndarray:
    """`statistic(indices [c, n]) -> [c]` over all resamples, chunk by chunk."""
    rng = np.random.default_rng(seed)
    parts = [statistic(indices) for indices in iter_block_bootstrap(n, block, resamples, rng, chunk)]
    return np.concatenate(parts)


def _interval(estimate: float, n: int, statistic: Callable[[np.ndarray], np.ndarray], block: int, resamples: int,
              confidence: float, seed: int, chunk: int | None) -> Interval:
    """The percentile interval of `statistic` over the resamples; none (NaN, with a note) when
    the n samples hold fewer than MIN_BLOCKS blocks."""
    if n < MIN_BLOCKS * max(int(block), 1):
        nan = float("nan")
        return Interval(float(estimate), nan, nan, float(confidence),
                        note=f"{n} samples < {MIN_BLOCKS} blocks of {max(int(block), 1)}")
    stats = _resampled_statistics(n, statistic, block, resamples, seed, chunk)
    return _percentile_interval(estimate, stats, confidence)


def _labels(y: np.ndarray, name: str) -> np.ndarray:
    y = np.asarray(y, dtype=np.int64).ravel()
    if y.size and (y.min() < 0 or y.max() >= N_CLASSES):
        raise ValueError(f"{name} holds values outside 0..{N_CLASSES - 1}")
    return y


def _confusions(codes: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """[c, 3, 3] confusion matrices of each resample, from `codes = y_true * 3 + y_pred`:
    one bincount over all rows, each row's codes shifted into its own 9 bins."""
    cells = N_CLASSES * N_CLASSES
    shifted = codes[indices] + cells * np.arange(indices.shape[0], dtype=np.int64)[:, None]
    counts = np.bincount(shifted.ravel(), minlength=cells * indices.shape[0])
    return counts.reshape(indices.shape[0], N_CLASSES, N_CLASSES)


def _metric_per_resample(metric: str, confusions: np.ndarray) -> np.ndarray:
    # a loop over 3x3 matrices (~20 µs each) keeps metrics.py the one definition of every score
    return np.array([metric_from_confusion(metric, c) for c in confusions], dtype=np.float64)


def _codes(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    y_true, y_pred = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and predictions differ in length: {y_true.size} vs {y_pred.size}")
    return y_true * N_CLASSES + y_pred


def _full_confusion(codes: np.ndarray) -> np.ndarray:
    return np.bincount(codes, minlength=N_CLASSES * N_CLASSES).reshape(N_CLASSES, N_CLASSES)


def metric_interval(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    metric: str = "f1_macro",
    block: int = 60,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    chunk: int | None = None,
) -> Interval:
    """Percentile interval of `metrics.metric_from_confusion(metric, ...)` over moving-block
    resamples of the (time-ordered) samples; the estimate is the full-sample value."""
    codes = _codes(y_true, y_pred)
    estimate = metric_from_confusion(metric, _full_confusion(codes))

    def statistic(indices: np.ndarray) -> np.ndarray:
        return _metric_per_resample(metric, _confusions(codes, indices))

    return _interval(estimate, codes.size, statistic, block, resamples, confidence, seed, chunk)


def difference_interval(
    y_true: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    metric: str = "f1_macro",
    block: int = 60,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    chunk: int | None = None,
) -> Interval:
    """Interval of metric(a) - metric(b), both scored on the SAME resampled indices (paired):
    what the two share (hard stretches, easy stretches) cancels, so the difference is measured
    far more tightly than two separate intervals suggest."""
    codes_a, codes_b = _codes(y_true, pred_a), _codes(y_true, pred_b)
    estimate = metric_from_confusion(metric, _full_confusion(codes_a)) - metric_from_confusion(
        metric, _full_confusion(codes_b)
    )

    def statistic(indices: np.ndarray) -> np.ndarray:
        score_a = _metric_per_resample(metric, _confusions(codes_a, indices))
        return score_a - _metric_per_resample(metric, _confusions(codes_b, indices))

    return _interval(estimate, codes_a.size, statistic, block, resamples, confidence, seed, chunk)


def _values(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    if not values.size:
        raise ValueError("no values to resample")
    if not np.isfinite(values).all():
        raise ValueError("values must be finite")
    return values


def mean_interval(
    values: np.ndarray,
    block: int = 60,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    chunk: int | None = None,
) -> Interval:
    """Interval of the mean of a time-ordered series."""
    values = _values(values)

    def statistic(indices: np.ndarray) -> np.ndarray:
        return values[indices].mean(axis=1)

    return _interval(float(values.mean()), values.size, statistic, block, resamples, confidence, seed, chunk)


def compounded_return_interval(
    trade_returns: np.ndarray,
    block: int = 1,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    chunk: int | None = None,
) -> Interval:
    """Interval of the compounded return prod(1 + r) - 1 of a sequence of trades. Trades that
    do not overlap in time are close to independent, hence the default block of one trade."""
    returns = _values(trade_returns)

    def statistic(indices: np.ndarray) -> np.ndarray:
        return np.prod(1.0 + returns[indices], axis=1) - 1.0

    return _interval(float(np.prod(1.0 + returns) - 1.0), returns.size, statistic, block, resamples, confidence,
                     seed, chunk)
