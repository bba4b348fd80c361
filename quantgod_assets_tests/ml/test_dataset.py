from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantgod_assets.labelling import label_day_files, label_suffix
from quantgod_assets.ml.dataset import (
    MissingDaysError,
    Scaler,
    WindowIndex,
    build_training_arrays,
    estimated_memory_bytes,
    load_labelled_range,
    rows_covered,
)
from quantgod_assets.ml.features import n_features
from quantgod_assets.ml.splits import train_val_test_split

from ..builders import write_pre_days

START = dt.date(2025, 3, 10)
N_LEVELS = 5


@pytest.fixture(scope="module")
def label_dir(tmp_path_factory):
    """Six labelled days, 2025-03-10 .. 2025-03-16 without the 13th (its preprocessed file too)."""
    root = tmp_path_factory.mktemp("data")
    days = [START + dt.timedelta(days=k) for k in range(7) if k != 3]
    write_pre_days(root / "pre", days, filled_levels=N_LEVELS)
    for day in days:
        label_day_files(root / "pre", root / "labelled", day, lookahead=60)
    return root / "labelled" / label_suffix(60)


# --- reading ---------------------------------------------------------------------------------


def test_missing_days_are_reported_not_skipped(label_dir):
    labelled = load_labelled_range(label_dir, START, "2025-03-17")
    assert labelled.missing_days == [dt.date(2025, 3, 13), dt.date(2025, 3, 17)]
    assert len(labelled.days) == 6 and not labelled.complete
    with pytest.raises(MissingDaysError, match="2025-03-13, 2025-03-17") as error:
        labelled.raise_if_missing()
    assert error.value.days == labelled.missing_days
    assert "2 labelled day(s) missing" in labelled.missing_message()
    load_labelled_range(label_dir, START, "2025-03-12").raise_if_missing()


def test_the_scan_is_lazy_time_ordered_and_reads_only_the_asked_columns(label_dir):
    labelled = load_labelled_range(label_dir, START, "2025-03-16", columns=["micro_price", "target"])
    lazy = labelled.scan()
    assert lazy.collect_schema().names() == ["ts", "micro_price", "target"]
    frame = lazy.collect()
    assert frame.height == 6 * 1440
    assert frame["ts"].is_sorted()
    assert frame["ts"].diff().drop_nulls().max() == dt.timedelta(days=1, minutes=1)  # the missing day
    with pytest.raises(ValueError):
        load_labelled_range(label_dir, "2025-03-16", START)


# --- arrays and windows ----------------------------------------------------------------------


def test_training_arrays_over_a_range_with_a_missing_day(label_dir):
    arrays = build_training_arrays(load_labelled_range(label_dir, START, "2025-03-16"), N_LEVELS)
    assert arrays.features.shape == (6 * 1440, n_features(N_LEVELS))
    assert arrays.features.dtype == np.float32
    steps = np.diff(arrays.minutes)
    assert set(steps.tolist()) == {1, 1441}
    after_gap = 3 * 1440
    # the mid return carries across consecutive days but not across the missing one
    assert set(np.flatnonzero(~arrays.valid)) == {0, after_gap}
    # the 12th's tail has no labels (its next day is missing), the last day's neither
    missing_targets = np.flatnonzero(arrays.targets < 0)
    assert set(missing_targets) == set(range(after_gap - 60, after_gap)) | set(range(6 * 1440 - 60, 6 * 1440))


def brute_force_ends(valid, targets, minutes, seq_len):
    ends = []
    for e in range(seq_len - 1, valid.size):
        rows = slice(e - seq_len + 1, e + 1)
        if valid[rows].all() and targets[e] >= 0 and (np.diff(minutes[rows]) == 1).all():
            ends.append(e)
    return np.array(ends, dtype=np.int64)


@settings(max_examples=60, deadline=None)
@given(seq_len=st.integers(1, 40), seed=st.integers(0, 100_000), invalid_share=st.sampled_from([0.0, 0.01, 0.1, 0.5]))
def test_windows_never_cross_invalid_rows_gaps_or_missing_targets(seq_len, seed, invalid_share):
    rng = np.random.default_rng(seed)
    n = 600
    valid = rng.random(n) >= invalid_share
    targets = np.where(rng.random(n) < 0.05, -1, rng.integers(0, 3, n)).astype(np.int8)
    minutes = np.cumsum(np.where(rng.random(n) < 0.01, 1440, 1))
    index = WindowIndex.build(valid, targets, seq_len, minutes)
    np.testing.assert_array_equal(index.ends, brute_force_ends(valid, targets, minutes, seq_len))


def test_windows_on_the_real_arrays_and_the_torch_dataset(label_dir):
    import torch
    from torch.utils.data import DataLoader, Dataset

    from quantgod_assets.ml.dataset import SequenceDataset

    arrays = build_training_arrays(load_labelled_range(label_dir, START, "2025-03-16"), N_LEVELS)
    seq_len = 120
    index = WindowIndex.build(arrays.valid, arrays.targets, seq_len, arrays.minutes)
    # the three days before the gap and the three after, each losing seq_len - 1 starts... and labels
    assert len(index) == 2 * (3 * 1440 - 60 - seq_len)
    dataset = SequenceDataset(arrays.features, arrays.targets, index)
    assert isinstance(dataset, Dataset) and len(dataset) == len(index)
    x, y = dataset[5]
    e = int(index.ends[5])
    assert x.dtype == torch.float32 and tuple(x.shape) == (seq_len, n_features(N_LEVELS))
    assert y.dtype == torch.int64 and int(y) == arrays.targets[e]
    np.testing.assert_array_equal(x.numpy(), arrays.features[e - seq_len + 1 : e + 1])
    assert not np.shares_memory(x.numpy(), arrays.features)
    batch_x, batch_y = next(iter(DataLoader(dataset, batch_size=8, shuffle=False)))
    assert tuple(batch_x.shape) == (8, seq_len, n_features(N_LEVELS)) and tuple(batch_y.shape) == (8,)
    assert torch.isfinite(batch_x).all()
    with pytest.raises(ValueError):
        SequenceDataset(arrays.features, arrays.targets, np.array([int(np.flatnonzero(arrays.targets < 0)[0])]), 1)
    with pytest.raises(ValueError):
        WindowIndex.build(arrays.valid, arrays.targets, 721)


def test_importing_the_dataset_module_does_not_import_torch():
    code = ("import sys, quantgod_assets.ml.dataset, quantgod_assets.ml.splits, quantgod_assets.ml.features, "
            "quantgod_assets.ml.baselines, quantgod_assets.ml.metrics, quantgod_assets.labelling; "
            "print('torch' in sys.modules, 'dagster' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# --- scaling ---------------------------------------------------------------------------------


def test_scaling_is_fitted_on_training_rows_only():
    rng = np.random.default_rng(0)
    n, seq_len = 20_000, 30
    features = rng.normal(5.0, 2.0, (n, 6)).astype(np.float32)
    ends = np.arange(seq_len - 1, n)
    split = train_val_test_split(ends, lookahead=60, seq_len=seq_len)
    train_rows = rows_covered(split.train, seq_len, n)
    assert train_rows[: split.train[-1] + 1].all() and not train_rows[split.train[-1] + 1 :].any()
    scaler = Scaler.fit(features, train_rows)
    used = features[train_rows].astype(np.float64)
    np.testing.assert_allclose(scaler.mean, used.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(scaler.std, used.std(axis=0), rtol=1e-8)
    assert scaler.n_rows == train_rows.sum()
    # validation and test rows may be anything: the statistics do not move
    changed = features.copy()
    changed[~train_rows] = 1e6
    again = Scaler.fit(changed, train_rows)
    np.testing.assert_array_equal(again.mean, scaler.mean)
    np.testing.assert_array_equal(again.std, scaler.std)
    # saved with the model and back
    restored = Scaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    np.testing.assert_array_equal(restored.mean, scaler.mean)
    scaled = restored.transform_inplace(features.copy())
    assert abs(scaled[train_rows].mean()) < 1e-3
    np.testing.assert_allclose(scaled[:10], restored.transform(features[:10]), rtol=1e-5, atol=1e-5)


def test_scaler_skips_non_finite_rows_and_constant_features():
    features = np.array([[1.0, 3.0], [np.nan, 3.0], [3.0, 3.0]], dtype=np.float32)
    scaler = Scaler.fit(features, np.array([0, 1, 2]))
    assert scaler.n_rows == 2 and scaler.mean.tolist() == [2.0, 3.0] and scaler.std.tolist() == [1.0, 1.0]


# --- memory ----------------------------------------------------------------------------------


def test_a_year_at_200_levels_fits_a_16_gb_machine_on_paper():
    year = 365 * 1440
    assert estimated_memory_bytes(year, 200) < 2 * 2**30  # the matrix and its row arrays
    # windows are 8 bytes per end row, whatever seq_len is
    assert 8 * year < 5 * 2**20


def test_window_index_of_a_year_allocates_per_row_not_per_window_element():
    year = 365 * 1440
    rng = np.random.default_rng(1)
    valid = rng.random(year) > 0.001
    targets = rng.integers(0, 3, year).astype(np.int8)
    minutes = np.arange(year, dtype=np.int64) + 28_000_000
    tracemalloc.start()
    try:
        index = WindowIndex.build(valid, targets, 720, minutes)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(index) > 0
    assert peak < 64 * year  # ~34 MB; one seq_len x F copy would be 720 x 807 x 4 bytes per row


def test_building_the_arrays_holds_little_beyond_the_matrix(label_dir):
    labelled = load_labelled_range(label_dir, START, "2025-03-16")
    rows = 6 * 1440
    tracemalloc.start()
    try:
        arrays = build_training_arrays(labelled, N_LEVELS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    kept = arrays.features.nbytes + arrays.valid.nbytes + arrays.targets.nbytes + arrays.minutes.nbytes
    assert kept == estimated_memory_bytes(rows, N_LEVELS)
    # besides what it keeps, one day's temporaries (1440 rows), not a second range-sized array
    assert peak - kept < 1440 * (n_features(N_LEVELS) * 8 + 400) + 2**20


def test_the_dataset_does_not_copy_the_matrix():
    from quantgod_assets.ml.dataset import SequenceDataset

    n, width, seq_len = 200_000, 64, 720
    features = np.zeros((n, width), dtype=np.float32)
    targets = np.ones(n, dtype=np.int8)
    tracemalloc.start()
    try:
        index = WindowIndex.build(np.ones(n, bool), targets, seq_len)
        dataset = SequenceDataset(features, targets, index)
        for i in range(0, len(dataset), len(dataset) // 50):
            dataset[i]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(dataset) == n - seq_len + 1
    # the index (O(rows)) and one window at a time; a windowed copy would be seq_len x the matrix
    assert peak < 64 * n + 4 * seq_len * width * 4 < features.nbytes / 3
