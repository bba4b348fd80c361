"""The preprocessed day's columns: one place that names them, in their fixed order."""

from __future__ import annotations

import polars as pl

OUT_LEVELS = 200
MINUTES_PER_DAY = 1440
SECONDS_PER_DAY = 86_400

LEVEL_FIELDS = ("bid_px", "bid_sz", "ask_px", "ask_sz")
STAT_COLUMNS = (
    "mid_open",
    "mid_high",
    "mid_low",
    "mid_close",
    "micro_price",
    "micro_price_mean",
    "spread",
    "spread_mean",
    "imbalance_1",
    "imbalance_5",
    "imbalance_20",
    "imbalance_200",
)
IMBALANCE_DEPTHS = (1, 5, 20, 200)


def level_columns(n_levels: int = OUT_LEVELS) -> list[str]:
    """`bid_px_0, bid_sz_0, ask_px_0, ask_sz_0, bid_px_1, ...`: level by level, so the top k is a prefix."""
    return [f"{field}_{i}" for i in range(n_levels) for field in LEVEL_FIELDS]


def book_columns(n_levels: int = OUT_LEVELS) -> list[str]:
    return ["ts", *level_columns(n_levels), *STAT_COLUMNS, "n_msgs", "valid_seconds"]


def book_schema(n_levels: int = OUT_LEVELS) -> pl.Schema:
    types: dict[str, pl.DataType] = {"ts": pl.Datetime("ms", "UTC")}
    types.update({name: pl.Float64() for name in level_columns(n_levels)})
    types.update({name: pl.Float64() for name in STAT_COLUMNS})
    types["n_msgs"] = pl.Int64()
    types["valid_seconds"] = pl.Int16()
    return pl.Schema(types)
