from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantgod_assets.ml.splits import purge_minutes, train_val_test_split, walk_forward_folds


def footprint(ends_minutes: np.ndarray, lookahead: int, seq_len: int) -> tuple[int, int]:
    """First and last minute any window of these ends touches: inputs and label horizons."""
    return int(ends_minutes.min()) - seq_len + 1, int(ends_minutes.max()) + lookahead


def test_purge_is_lookahead_plus_seq_len_minus_one():
    assert purge_minutes(60, 1) == 60
    assert purge_minutes(60, 120) == 179
    with pytest.raises(ValueError):
        purge_minutes(60, 0)


@pytest.mark.parametrize(("lookahead", "seq_len"), [(60, 1), (60, 30), (30, 720), (120, 240)])
def test_purge_sizes_at_every_boundary_on_contiguous_ends(lookahead, seq_len):
    ends = np.arange(seq_len - 1, 100_000)
    split = train_val_test_split(ends, lookahead, seq_len)
    purge = lookahead + seq_len - 1
    assert split.purge == purge
    # exactly `purge` minutes of ends dropped at each boundary, nothing else
    assert split.val[0] - split.train[-1] == purge + 1
    assert split.test[0] - split.val[-1] == purge + 1
    assert split.train.size + split.val.size + split.test.size == ends.size - 2 * purge
    for part in (split.train, split.val, split.test):
        assert (np.diff(part) == 1).all()
    # no training label's horizon reaches the next split's inputs, and so on for val -> test
    assert split.train[-1] + lookahead < split.val[0] - seq_len + 1
    assert split.val[-1] + lookahead < split.test[0] - seq_len + 1
    assert split.train.size / ends.size == pytest.approx(0.7, abs=0.01)
    assert split.test.size / ends.size == pytest.approx(0.15 - purge / ends.size, abs=0.01)


@settings(max_examples=40, deadline=None)
@given(
    lookahead=st.integers(1, 240),
    seq_len=st.integers(1, 720),
    seed=st.integers(0, 10_000),
    fractions=st.sampled_from([(0.7, 0.15, 0.15), (0.6, 0.2, 0.2), (0.8, 0.1, 0.1)]),
)
def test_footprints_of_the_splits_never_overlap_even_with_gaps(lookahead, seq_len, seed, fractions):
    rng = np.random.default_rng(seed)
    n_rows = 30_000
    minutes = np.cumsum(rng.choice([1, 1, 1, 1, 2, 300], n_rows)) + 28_000_000  # gaps of all sizes
    ends = np.sort(rng.choice(np.arange(seq_len, n_rows), 8_000, replace=False))
    split = train_val_test_split(ends, lookahead, seq_len, fractions, minutes=minutes)
    parts = [p for p in (split.train, split.val, split.test) if p.size]
    assert np.array_equal(np.concatenate(parts), np.unique(np.concatenate(parts)))  # ordered, disjoint
    prints = [footprint(minutes[p], lookahead, seq_len) for p in parts]
    for (_, end_a), (start_b, _) in itertools.pairwise(prints):
        assert end_a < start_b
    # and the purge removed only what it had to: the first dropped end would have overlapped
    dropped = np.setdiff1d(ends, np.concatenate(parts))
    for d in dropped:
        earlier = [p for p in parts if p[-1] < d]
        assert earlier and minutes[d] - minutes[earlier[-1][-1]] <= split.purge


def test_walk_forward_folds_expand_and_are_purged():
    lookahead, seq_len = 60, 20
    ends = np.arange(19, 50_000)
    folds = walk_forward_folds(ends, lookahead, seq_len, n_folds=4, initial_train_fraction=0.4)
    assert len(folds) == 4
    previous_val_end = None
    for k, fold in enumerate(folds):
        assert fold.test.size == 0
        assert fold.train[0] == ends[0]
        assert fold.val[0] - fold.train[-1] == lookahead + seq_len
        if k:
            assert fold.train.size > folds[k - 1].train.size
            assert fold.train[-1] == previous_val_end  # the previous block joins the training set
        previous_val_end = fold.val[-1]
    assert folds[-1].val[-1] == ends[-1]


def test_bad_fractions_and_unsorted_ends():
    with pytest.raises(ValueError):
        train_val_test_split(np.arange(100), 5, 1, (0.5, 0.5, 0.5))
    with pytest.raises(ValueError):
        train_val_test_split(np.array([3, 2, 1]), 5, 1)
