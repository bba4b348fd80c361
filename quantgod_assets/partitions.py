"""The one daily partitions object (UTC), imported everywhere; never re-declared per asset.

Its first day comes from `partitions_start` in configs/etl.yaml (default 2023-01-18, the first
BTCUSDT day of Bybit's linear archive), read once when the definitions load.
"""

from __future__ import annotations

import dagster as dg

from .settings import partitions_start

daily_partitions = dg.DailyPartitionsDefinition(
    start_date=partitions_start().isoformat(),
    timezone="UTC",
    fmt="%Y-%m-%d",
)
