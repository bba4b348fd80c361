"""Time-ordered, purged train / validation / test splits of window end rows.

The purge rule: the *footprint* of a window ending at minute e is every minute its sample touches,
its inputs e-seq_len+1 .. e and its label's price horizon e .. e+lookahead. Footprints of
different splits never overlap. So at every boundary, with the last end of the earlier split at
minute a and the first end of the later split at minute b,

    a + lookahead < b - seq_len + 1,   i.e.   b - a >= lookahead + seq_len,

which drops `purge = lookahead + seq_len - 1` minutes of window ends at the start of each later
split. This is stronger than the minimum (no training label's horizon reaching into the next
split, b - a > lookahead): it also keeps validation inputs from containing the prices that decided
training labels, so a model cannot score on validation by having memorised those labels. For a
row model (seq_len = 1) the purge is `lookahead` minutes.

Distances are measured in minutes (`minutes` of each row) when given, so a missing day counts as
the time it is, not as zero rows. The test split is returned but meant to be evaluated once, at
the very end; walk-forward folds work inside the development (train + validation) ends only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Split", "purge_minutes", "train_val_test_split", "walk_forward_folds"]


def purge_minutes(lookahead: int, seq_len: int = 1) -> int:
    """Minutes of window ends dropped at the start of each later split."""
    if lookahead < 0 or seq_len < 1:
        raise ValueError(f"need lookahead >= 0 and seq_len >= 1, got {lookahead}, {seq_len}")
    return int(lookahead) + int(seq_len) - 1


@dataclass
class Split:
    """Window end rows (int64, ascending) of each part; `test` is empty for walk-forward folds."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    purge: int  # minutes of ends dropped at the start of val and of test
    lookahead: int
    seq_len: int

    def parts(self) -> dict[str, np.ndarray]:
        return {"train": self.train, "val": self.val, "test": self.test}


def _times(ends: np.ndarray, minutes: np.ndarray | None) -> np.ndarray:
    if minutes is None:
        return ends
    return np.asarray(minutes, dtype=np.int64)[ends]


def _prepare(ends: np.ndarray) -> np.ndarray:
    ends = np.asarray(ends, dtype=np.int64)
    if ends.size and (np.diff(ends) <= 0).any():
        raise ValueError("window ends must be strictly increasing")
    return ends


def _purged_after(ends: np.ndarray, times: np.ndarray, last_before: int | None, purge: int) -> np.ndarray:
    """`ends` whose time is at least purge + 1 minutes after `last_before`."""
    if last_before is None:
        return ends
    return ends[times >= last_before + purge + 1]


def train_val_test_split(
    ends: np.ndarray,
    lookahead: int,
    seq_len: int = 1,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    minutes: np.ndarray | None = None,
) -> Split:
    """Cuts the usable window ends, in time order, by `fractions` of their count, then purges
    `purge_minutes(lookahead, seq_len)` at the start of validation and of test.

    `minutes`: the minute (since the epoch) of every row of the feature matrix; without it the
    row number is taken as the minute.
    """
    ends = _prepare(ends)
    given = tuple(float(f) for f in fractions)
    if len(given) != 3 or min(given) < 0 or not np.isclose(sum(given), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {given}")
    fractions = (given[0], given[1], given[2])
    purge = purge_minutes(lookahead, seq_len)
    times = _times(ends, minutes)
    n = ends.size
    cut_1 = round(n * fractions[0])
    cut_2 = round(n * (fractions[0] + fractions[1]))
    train = ends[:cut_1]
    val_candidates, val_times = ends[cut_1:cut_2], times[cut_1:cut_2]
    test_candidates, test_times = ends[cut_2:], times[cut_2:]
    train_last = int(times[cut_1 - 1]) if cut_1 else None
    val = _purged_after(val_candidates, val_times, train_last, purge)
    # test is purged against the last end before it, whichever split that end belongs to
    val_last = int(_times(val, minutes)[-1]) if val.size else train_last
    test = _purged_after(test_candidates, test_times, val_last, purge)
    return Split(train, val, test, purge, int(lookahead), int(seq_len))


def walk_forward_folds(
    ends: np.ndarray,
    lookahead: int,
    seq_len: int = 1,
    n_folds: int = 4,
    initial_train_fraction: float = 0.5,
    minutes: np.ndarray | None = None,
) -> list[Split]:
    """Expanding-window folds over the development ends (pass `split.train` and `split.val`
    together, never the test ends): the ends after the first `initial_train_fraction` are cut
    into `n_folds` consecutive validation blocks; fold k trains on every end before its block and
    validates on the block, with the same purge at the start of the block.
    """
    ends = _prepare(ends)
    if n_folds < 1 or not 0 < initial_train_fraction < 1:
        raise ValueError("need n_folds >= 1 and 0 < initial_train_fraction < 1")
    purge = purge_minutes(lookahead, seq_len)
    times = _times(ends, minutes)
    first = round(ends.size * initial_train_fraction)
    bounds = np.linspace(first, ends.size, n_folds + 1).round().astype(np.int64)
    folds = []
    empty = np.empty(0, dtype=np.int64)
    for k in range(n_folds):
        lo, hi = int(bounds[k]), int(bounds[k + 1])
        if lo == 0 or hi <= lo:
            continue
        val = _purged_after(ends[lo:hi], times[lo:hi], int(times[lo - 1]), purge)
        folds.append(Split(ends[:lo], val, empty, purge, int(lookahead), int(seq_len)))
    return folds
