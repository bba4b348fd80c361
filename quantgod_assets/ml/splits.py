"""Time-ordered, purged train / validation / test splits of window end rows.

The purge rule: the *footprint* of a window ending at minute e is every minute its sample touches:
its inputs e-seq_len+1 .. e, the minute before them (the first input row's mid return is
measured from the mid of minute e-seq_len), and its label's price horizon e .. e+lookahead.
Footprints of different parts never overlap. So at every boundary, with the last end of the
earlier part at minute a and the first end of the later part at minute b,

    a + lookahead < b - seq_len,   i.e.   b - a >= lookahead + seq_len + 1,

which drops `purge = lookahead + seq_len` minutes of window ends at the start of each later part
(plus an optional `embargo` of further minutes). This is stronger than the minimum (no training
label's horizon reaching into the next part, b - a > lookahead): it also keeps validation inputs
from containing the prices that decided training labels, so a model cannot score on validation
by having memorised those labels.

Distances are measured in minutes (`minutes` of each row) when given, so a missing day counts as
the time it is, not as zero rows.

`walk_forward_split` is what the ML stages use: the test block is every end from a fixed minute
on (`test_start_minute`: the last `test_share` of the range's ROWS, so the block is the same for
every trial whatever its seq_len or n_levels, and no trial's validation can reach into it); the
purge is taken from the end of the development period before it. The development period is cut
into K + 1 consecutive blocks, and fold k (1..K) trains on blocks 0..k-1 and validates on block k
(expanding window). The final model trains on the last fold's training ends and stops early on
its validation block (so it never trains on that last block: it is its early-stopping set).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Split", "WalkForward", "calendar_walk_forward", "purge_minutes", "test_start_minute",
           "train_val_test_split", "walk_forward_split"]


def purge_minutes(lookahead: int, seq_len: int = 1) -> int:
    """Minutes of window ends dropped at the start of each later part (the module's rule)."""
    if lookahead < 0 or seq_len < 1:
        raise ValueError(f"need lookahead >= 0 and seq_len >= 1, got {lookahead}, {seq_len}")
    return int(lookahead) + int(seq_len)


@dataclass
class Split:
    """Window end rows (int64, ascending) of each part; `test` is empty for walk-forward folds."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    purge: int  # minutes of ends dropped at the start of val and of test (embargo included)
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
    embargo: int = 0,
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
    purge = purge_minutes(lookahead, seq_len) + int(embargo)
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


@dataclass
class WalkForward:
    """The folds over the development period and the test block after it.

    `final` trains on the last fold's training ends, validates (early stopping) on its block and
    holds the test ends: the split the final model uses."""

    folds: list[Split]
    test: np.ndarray
    purge: int

    @property
    def final(self) -> Split:
        last = self.folds[-1]
        return Split(last.train, last.val, self.test, self.purge, last.lookahead, last.seq_len)



def test_start_minute(minutes: np.ndarray, test_share: float) -> int:
    """The minute the test block starts: the first of the last `test_share` of the rows."""
    minutes = np.asarray(minutes, dtype=np.int64)
    if not minutes.size:
        raise ValueError("no rows")
    return int(minutes[min(round(minutes.size * (1 - test_share)), minutes.size - 1)])


def walk_forward_split(
    ends: np.ndarray,
    lookahead: int,
    seq_len: int = 1,
    test_share: float = 0.15,
    n_folds: int = 5,
    minutes: np.ndarray | None = None,
    embargo: int = 0,
    test_start: int | None = None,
) -> WalkForward:
    """The test block is every end at or after `test_start` (a minute, or a row number without
    `minutes`; default: the first of the last `test_share` of the ends); development ends are
    those at least purge + 1 minutes before it. The development ends are cut into `n_folds + 1`
    blocks of equal count and fold k trains on blocks 0..k-1, validating on block k (purged).
    Folds whose block is emptied by the purge are dropped; none left raises ValueError."""
    ends = _prepare(ends)
    if not 0 < test_share < 1 or n_folds < 1:
        raise ValueError(f"need 0 < test_share < 1 and n_folds >= 1, got {test_share}, {n_folds}")
    times = _times(ends, minutes)
    if test_start is None:
        test_start = int(times[min(round(ends.size * (1 - test_share)), max(ends.size - 1, 0))]) if ends.size else 0
    # one instrument is the calendar case with one block: the same cut, folds and purges
    return calendar_walk_forward(ends, times, lookahead, seq_len, n_folds, int(test_start), embargo)


def calendar_walk_forward(
    ends: np.ndarray,
    times: np.ndarray,
    lookahead: int,
    seq_len: int,
    n_folds: int,
    test_start: int,
    embargo: int = 0,
) -> WalkForward:
    """`walk_forward_split` over the window ends of several instruments at once, cut by CALENDAR
    minutes: `ends` are ascending rows of a matrix of instrument blocks, `times` their minutes
    (ascending within a block, restarting at every block). The test block is every end at or
    after `test_start`, the development ends those at least purge + 1 minutes before it, and the
    fold boundaries are minutes taken once from the union of the development ends' minutes (its
    K + 1 blocks of equal count): every instrument is cut at the same minutes, and each
    validation block is purged against the last training minute of ANY instrument, so no
    instrument's future reaches into another's past. For one instrument this is exactly
    `walk_forward_split` with `minutes`."""
    ends = np.asarray(ends, dtype=np.int64)
    times = np.asarray(times, dtype=np.int64)
    if ends.shape != times.shape:
        raise ValueError("ends and times must have the same length")
    if ends.size and (np.diff(ends) <= 0).any():
        raise ValueError("window ends must be strictly increasing")
    if n_folds < 1:
        raise ValueError(f"need n_folds >= 1, got {n_folds}")
    purge = purge_minutes(lookahead, seq_len) + int(embargo)
    test = ends[times >= test_start]
    keep = times <= test_start - purge - 1
    development, dev_times = ends[keep], times[keep]
    calendar = np.unique(dev_times)  # sorted minutes at which some instrument's development window ends
    cut = calendar.size
    bounds = np.linspace(0, cut, n_folds + 2).round().astype(np.int64)
    folds = []
    for k in range(1, n_folds + 1):
        lo, hi = int(bounds[k]), int(bounds[k + 1])
        if lo == 0 or hi <= lo:
            continue
        last_train = int(calendar[lo - 1])
        upper = int(calendar[hi]) if hi < cut else None
        in_block = (dev_times > last_train) & (dev_times < upper if upper is not None else True)
        val_mask = in_block & (dev_times >= last_train + purge + 1)
        val = development[val_mask]
        if val.size:
            folds.append(Split(development[dev_times <= last_train], val, np.empty(0, dtype=np.int64), purge,
                               int(lookahead), int(seq_len)))
    if not folds:
        raise ValueError(f"no walk-forward fold holds a window after the purge of {purge} min: "
                         f"{ends.size} windows, {n_folds} folds")
    return WalkForward(folds, test, purge)
