"""From a replayed day to the 1440-row frame of one-minute books and statistics."""

from __future__ import annotations

import numpy as np
import polars as pl

from . import _kernel as k
from .replay import DayReplay
from .schema import IMBALANCE_DEPTHS, LEVEL_FIELDS, MINUTES_PER_DAY, book_columns, book_schema


def _nan_to_null(values: np.ndarray) -> pl.Series:
    return pl.Series(values=values, dtype=pl.Float64, nan_to_null=True)


def minute_frame(replay: DayReplay) -> pl.DataFrame:
    """One row per UTC minute; book columns from the minute's close sample; null, never NaN."""
    n_levels = replay.minute_levels.shape[2]
    stats = np.full((MINUTES_PER_DAY, 7), np.nan)
    stats[:, 6] = 0
    k.minute_stats(replay.second_valid.astype(np.uint8), np.stack(
        [replay.second_mid, replay.second_micro, replay.second_spread]), stats)
    close = np.arange(MINUTES_PER_DAY) * 60 + 59
    start = replay.day_start_ms
    columns: dict[str, pl.Series] = {
        "ts": pl.Series(np.arange(MINUTES_PER_DAY, dtype=np.int64) * 60_000 + start).cast(
            pl.Datetime("ms", "UTC")
        )
    }
    for i in range(n_levels):
        for f, field in enumerate(LEVEL_FIELDS):
            columns[f"{field}_{i}"] = _nan_to_null(replay.minute_levels[:, f, i])
    named = {
        "mid_open": stats[:, 0],
        "mid_high": stats[:, 1],
        "mid_low": stats[:, 2],
        "mid_close": stats[:, 3],
        "micro_price": replay.second_micro[close],
        "micro_price_mean": stats[:, 4],
        "spread": replay.second_spread[close],
        "spread_mean": stats[:, 5],
    }
    for d, depth in enumerate(IMBALANCE_DEPTHS):
        named[f"imbalance_{depth}"] = replay.minute_imbalance[:, d]
    for name, values in named.items():
        columns[name] = _nan_to_null(values)
    columns["n_msgs"] = pl.Series(replay.minute_msgs, dtype=pl.Int64)
    columns["valid_seconds"] = pl.Series(stats[:, 6].astype(np.int16), dtype=pl.Int16)
    frame = pl.DataFrame(columns)
    return frame.select(book_columns(n_levels)).cast(book_schema(n_levels))
