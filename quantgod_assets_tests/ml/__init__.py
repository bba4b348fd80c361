"""Helpers shared by the labelling and ML tests: preprocessed day frames built from a price path."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import polars as pl

from quantgod_assets.orderbook.schema import MINUTES_PER_DAY, book_columns, book_schema, level_columns

TICK = 0.1


def make_day_frame(
    day: dt.date | str,
    prices: np.ndarray | Iterable[float] | None = None,
    *,
    filled_levels: int = 10,
    invalid_minutes: Iterable[int] = (),
    seed: int = 0,
) -> pl.DataFrame:
    """A preprocessed day with the exact `book_schema()`: `micro_price` = `mid_close` = the price
    path (1440 values; a gentle random walk by default), `filled_levels` levels on each side, the
    deeper levels null; `invalid_minutes` have null book columns and micro price, as when the close
    sample was invalid."""
    day = dt.date.fromisoformat(day) if isinstance(day, str) else day
    rng = np.random.default_rng(seed)
    if prices is None:
        prices = 30_000 * np.exp(np.cumsum(rng.normal(0, 5e-4, MINUTES_PER_DAY)))
    prices = np.asarray(list(prices) if not isinstance(prices, np.ndarray) else prices, dtype=np.float64)
    n = prices.size
    start = int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp() * 1000)
    spread = np.full(n, TICK)
    columns: dict[str, np.ndarray] = {"ts": np.arange(n, dtype=np.int64) * 60_000 + start}
    null = np.full(n, np.nan)
    bid_total = np.zeros(n)
    ask_total = np.zeros(n)
    for i in range(200):
        if i < filled_levels:
            bid_sz = rng.uniform(0.1, 5.0, n)
            ask_sz = rng.uniform(0.1, 5.0, n)
            columns[f"bid_px_{i}"] = prices - spread / 2 - i * TICK
            columns[f"bid_sz_{i}"] = bid_sz
            columns[f"ask_px_{i}"] = prices + spread / 2 + i * TICK
            columns[f"ask_sz_{i}"] = ask_sz
            bid_total += bid_sz
            ask_total += ask_sz
        else:
            for field in ("bid_px", "bid_sz", "ask_px", "ask_sz"):
                columns[f"{field}_{i}"] = null
    imbalance = (bid_total - ask_total) / (bid_total + ask_total)
    columns.update(
        mid_open=prices, mid_high=prices, mid_low=prices, mid_close=prices,
        micro_price=prices.copy(), micro_price_mean=prices, spread=spread, spread_mean=spread,
        imbalance_1=imbalance, imbalance_5=imbalance, imbalance_20=imbalance, imbalance_200=imbalance,
        n_msgs=np.full(n, 100, dtype=np.int64), valid_seconds=np.full(n, 60, dtype=np.int16),
    )
    bad = np.zeros(n, dtype=bool)
    bad[list(invalid_minutes)] = True
    for name in [*level_columns(), "micro_price", "spread", "imbalance_1", "imbalance_5",
                 "imbalance_20", "imbalance_200"]:
        columns[name] = np.where(bad, np.nan, columns[name])
    columns["valid_seconds"] = np.where(bad, 0, columns["valid_seconds"]).astype(np.int16)
    schema = book_schema()
    series = [pl.Series("ts", columns["ts"]).cast(pl.Datetime("ms", "UTC"))]
    for name in book_columns()[1:]:
        series.append(pl.Series(name, columns[name], dtype=schema[name], nan_to_null=schema[name] == pl.Float64()))
    return pl.DataFrame(series)


def write_pre_days(pre_dir: Path, days: Iterable[dt.date], **kwargs) -> list[Path]:
    """Writes `make_day_frame` days as `{pre_dir}/{YYYY-MM-DD}.parquet`; a different seed per day."""
    pre_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, day in enumerate(days):
        path = pre_dir / f"{day.isoformat()}.parquet"
        make_day_frame(day, seed=k, **kwargs).write_parquet(path)
        paths.append(path)
    return paths
