from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantgod_assets.ml.splits import purge_minutes, train_val_test_split, walk_forward_split
from quantgod_assets.ml.splits import test_start_minute as start_of_test_block


def footprint(ends_minutes: np.ndarray, lookahead: int, seq_len: int) -> tuple[int, int]:
    """First and last minute any window of these ends touches: inputs (and the minute before them,
    whose mid the first input row's return is measured from) and label horizons."""
    return int(ends_minutes.min()) - seq_len, int(ends_minutes.max()) + lookahead


def test_purge_is_lookahead_plus_seq_len():
    assert purge_minutes(60, 1) == 61
    assert purge_minutes(60, 120) == 180
    with pytest.raises(ValueError):
        purge_minutes(60, 0)


def test_a_window_reads_the_minute_before_it_so_the_old_purge_leaked_one_minute():
    """The first input row's mid return uses the mid of the row before the window: with the old
    purge (lookahead + seq_len - 1) that minute was the last minute of the last training label's
    horizon, so a validation input held a price that decided a training label."""
    import polars as pl

    from quantgod_assets.ml.features import frame_features

    lookahead, seq_len, n = 5, 4, 40
    mid = 100 + np.arange(n, dtype=float)
    frame = pl.DataFrame({
        "ts": pl.datetime_range(pl.datetime(2025, 1, 1), pl.datetime(2025, 1, 1, 0, n - 1), "1m", eager=True),
        "bid_px_0": mid - 0.5, "bid_sz_0": np.ones(n), "ask_px_0": mid + 0.5, "ask_sz_0": np.ones(n),
        "spread": np.ones(n), "micro_price": mid,
        **{c: np.zeros(n) for c in ("imbalance_1", "imbalance_5", "imbalance_20", "imbalance_200")},
    })
    ends = np.arange(seq_len, n)
    split = train_val_test_split(ends, lookahead, seq_len, (0.5, 0.5, 0.0))
    first_val = int(split.val[0])
    touched = first_val - seq_len  # the row before the first validation window's first row
    changed = frame.with_columns(bid_px_0=pl.Series(np.where(np.arange(n) == touched, mid - 3.5, mid - 0.5)))
    window = slice(first_val - seq_len + 1, first_val + 1)
    before = frame_features(frame, 1).values[window]
    after = frame_features(changed, 1).values[window]
    assert not np.array_equal(before, after, equal_nan=True)  # the window reads that minute
    last_train_horizon = int(split.train[-1]) + lookahead
    assert last_train_horizon < touched  # the purge keeps it out of every training label
    old_purge_last_train = first_val - (lookahead + seq_len - 1) - 1  # the last training end the old rule kept
    assert old_purge_last_train + lookahead == touched  # ... which the old purge did not


@pytest.mark.parametrize(("lookahead", "seq_len"), [(60, 1), (60, 30), (30, 720), (120, 240)])
def test_purge_sizes_at_every_boundary_on_contiguous_ends(lookahead, seq_len):
    ends = np.arange(seq_len - 1, 100_000)
    split = train_val_test_split(ends, lookahead, seq_len)
    purge = lookahead + seq_len
    assert split.purge == purge
    # exactly `purge` minutes of ends dropped at each boundary, nothing else
    assert split.val[0] - split.train[-1] == purge + 1
    assert split.test[0] - split.val[-1] == purge + 1
    assert split.train.size + split.val.size + split.test.size == ends.size - 2 * purge
    for part in (split.train, split.val, split.test):
        assert (np.diff(part) == 1).all()
    # no training label's horizon reaches the next split's inputs, and so on for val -> test
    assert split.train[-1] + lookahead < split.val[0] - seq_len
    assert split.val[-1] + lookahead < split.test[0] - seq_len
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


def test_bad_fractions_and_unsorted_ends():
    with pytest.raises(ValueError):
        train_val_test_split(np.arange(100), 5, 1, (0.5, 0.5, 0.5))
    with pytest.raises(ValueError):
        train_val_test_split(np.array([3, 2, 1]), 5, 1)


@pytest.mark.parametrize(("n_folds", "embargo"), [(1, 0), (3, 0), (5, 30)])
def test_walk_forward_split_folds_expand_and_the_test_block_follows(n_folds, embargo):
    lookahead, seq_len = 60, 30
    ends = np.arange(29, 60_000)
    walk = walk_forward_split(ends, lookahead, seq_len, test_share=0.15, n_folds=n_folds, embargo=embargo)
    gap = lookahead + seq_len + embargo + 1  # purge + embargo minutes of ends dropped at every boundary
    assert len(walk.folds) == n_folds and walk.purge == gap - 1
    for k, fold in enumerate(walk.folds):
        assert fold.train[0] == ends[0] and fold.val[0] - fold.train[-1] == gap
        if k:  # expanding: the previous validation block joins the training ends
            assert fold.train[-1] == walk.folds[k - 1].val[-1]
    assert walk.test[0] - walk.folds[-1].val[-1] == gap and walk.test[-1] == ends[-1]
    assert walk.test.size == pytest.approx(0.15 * ends.size, abs=2)  # the purge comes off the development side
    final = walk.final  # the final model: the last fold's ends plus the test block
    assert np.array_equal(final.train, walk.folds[-1].train) and np.array_equal(final.test, walk.test)
    blocks = [f.val.size for f in walk.folds]
    assert max(blocks) - min(blocks) <= 2  # equal blocks of the development period


@settings(max_examples=30, deadline=None)
@given(lookahead=st.integers(1, 120), seq_len=st.integers(1, 240), n_folds=st.integers(1, 6),
       seed=st.integers(0, 10_000))
def test_walk_forward_footprints_never_overlap_with_gaps(lookahead, seq_len, n_folds, seed):
    rng = np.random.default_rng(seed)
    minutes = np.cumsum(rng.choice([1, 1, 1, 2, 500], 30_000)) + 28_000_000
    ends = np.sort(rng.choice(np.arange(seq_len, minutes.size), 10_000, replace=False))
    walk = walk_forward_split(ends, lookahead, seq_len, 0.2, n_folds, minutes=minutes)
    for fold in [*walk.folds, walk.final]:
        parts = [p for p in (fold.train, fold.val, fold.test) if p.size]
        prints = [footprint(minutes[p], lookahead, seq_len) for p in parts]
        for (_, end_a), (start_b, _) in itertools.pairwise(prints):
            assert end_a < start_b


def test_walk_forward_split_with_too_few_windows_names_the_purge():
    with pytest.raises(ValueError, match="purge"):
        walk_forward_split(np.arange(100), 60, 30, 0.15, 5)


def test_the_test_block_is_the_same_for_every_seq_len():
    """Cut at a minute of the rows, not a count of windows: a trial with long windows (fewer of
    them) must not validate on minutes another trial's final model is tested on."""
    lookahead, n_rows = 60, 20_000
    minutes = np.arange(n_rows) + 28_000_000
    minutes[9_000:] += 400  # a gap: long windows lose more ends around it
    start = start_of_test_block(minutes, 0.2)
    blocks = []
    for seq_len in (1, 30, 720):
        ends = np.array([e for e in range(seq_len - 1, n_rows)
                         if minutes[e] - minutes[e - seq_len + 1] == seq_len - 1], dtype=np.int64)
        walk = walk_forward_split(ends, lookahead, seq_len, 0.2, 3, minutes=minutes, test_start=start)
        assert minutes[walk.folds[-1].val[-1]] + lookahead < minutes[walk.test[0]] - seq_len
        blocks.append(walk.test)
    assert all(np.array_equal(blocks[0], b) for b in blocks[1:])
    assert minutes[blocks[0][0]] == start == minutes[round(n_rows * 0.8)]
