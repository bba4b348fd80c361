from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantgod_assets.ml.features import (
    feature_names,
    frame_features,
    n_features,
    required_columns,
)

from ..builders import TICK, make_day_frame

DAY = dt.date(2025, 3, 14)
FRAME = make_day_frame(DAY, filled_levels=10, invalid_minutes=[700])


def test_names_count_and_columns():
    names = feature_names(10)
    assert len(names) == n_features(10) == 4 * 10 + 7
    assert names[:4] == ["bid_px_bps_0", "bid_sz_log_0", "ask_px_bps_0", "ask_sz_log_0"]
    assert names[-7:] == ["mid_logret_bps", "spread_bps", "micro_bps", "imbalance_1", "imbalance_5",
                          "imbalance_20", "imbalance_200"]
    assert n_features(200) == 807
    assert required_columns(2)[:5] == ["ts", "bid_px_0", "bid_sz_0", "ask_px_0", "ask_sz_0"]
    for bad in (0, 201):
        with pytest.raises(ValueError):
            feature_names(bad)


def test_values_are_distances_in_bps_log_sizes_and_returns():
    block = frame_features(FRAME, 3)
    values = block.values
    assert values.dtype == np.float32 and values.shape == (1440, n_features(3))
    mid = FRAME["mid_close"].to_numpy()
    t = 10
    assert values[t, 0] == pytest.approx(-(TICK / 2) / mid[t] * 1e4, rel=1e-5)
    assert values[t, 8] == pytest.approx(-(TICK / 2 + 2 * TICK) / mid[t] * 1e4, rel=1e-5)  # bid level 2
    assert values[t, 10] == pytest.approx((TICK / 2 + 2 * TICK) / mid[t] * 1e4, rel=1e-5)  # ask level 2
    assert values[t, 1] == pytest.approx(np.log1p(FRAME["bid_sz_0"][t]), rel=1e-6)
    col = {name: k for k, name in enumerate(block.names)}
    assert values[t, col["mid_logret_bps"]] == pytest.approx(np.log(mid[t] / mid[t - 1]) * 1e4, rel=1e-4)
    assert values[t, col["spread_bps"]] == pytest.approx(TICK / mid[t] * 1e4, rel=1e-5)
    assert values[t, col["micro_bps"]] == pytest.approx(0.0, abs=1e-3)
    assert values[t, col["imbalance_5"]] == pytest.approx(FRAME["imbalance_5"][t], rel=1e-6)


def test_validity_invalid_rows_their_successor_the_start_and_gaps():
    valid = frame_features(FRAME, 10).valid
    # row 0 has no previous minute; 700 has no book; 701's mid return needs 700
    assert set(np.flatnonzero(~valid)) == {0, 700, 701}
    previous_day = make_day_frame(DAY - dt.timedelta(days=1))
    before = frame_features(previous_day, 10)
    continued = frame_features(FRAME, 10, previous=(before.last_ts_ms, before.last_mid))
    assert continued.valid[0]
    assert continued.values[0, 4 * 10] == pytest.approx(
        np.log(FRAME["mid_close"][0] / previous_day["mid_close"][-1]) * 1e4, rel=1e-4)
    gappy = pl.concat([FRAME.slice(0, 100), FRAME.slice(150, 100)])
    assert set(np.flatnonzero(~frame_features(gappy, 10).valid)) == {0, 100}
    # deeper than the book: every row misses an input
    assert not frame_features(FRAME, 11).valid.any()


def test_filling_a_slice_of_a_bigger_matrix():
    big = np.full((2000, n_features(5)), -1.0, dtype=np.float32)
    block = frame_features(FRAME, 5, out=big[100:1540])
    assert np.shares_memory(block.values, big)
    np.testing.assert_array_equal(big[100:1540], frame_features(FRAME, 5).values)
    assert (big[:100] == -1).all() and (big[1540:] == -1).all()
    with pytest.raises(ValueError):
        frame_features(FRAME, 5, out=np.empty((1440, 3), np.float32))


def _scramble_after(frame: pl.DataFrame, t: int, seed: int) -> pl.DataFrame:
    """Every row after t replaced: other prices, sizes, stats, some rows null."""
    rng = np.random.default_rng(seed)
    altered = make_day_frame(DAY, 25_000 * np.exp(np.cumsum(rng.normal(0, 3e-3, 1440))), seed=seed + 1,
                             invalid_minutes=rng.choice(1440, 50, replace=False))
    return pl.concat([frame.head(t + 1), altered.slice(t + 1)])


@settings(max_examples=25, deadline=None)
@given(t=st.integers(0, 1438), seed=st.integers(0, 1000))
def test_features_at_t_do_not_change_when_every_later_row_changes(t, seed):
    original = frame_features(FRAME, 10)
    altered_frame = _scramble_after(FRAME, t, seed)
    assert not altered_frame.slice(t + 1).equals(FRAME.slice(t + 1))
    altered = frame_features(altered_frame, 10)
    np.testing.assert_array_equal(altered.values[: t + 1], original.values[: t + 1])
    np.testing.assert_array_equal(altered.valid[: t + 1], original.valid[: t + 1])
