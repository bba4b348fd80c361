"""Assembles the code location: assets, checks, resources, executor. Nothing else.

The daily assets are built once per instrument of etl.yaml `instruments:` (read when the
definitions load), keyed `{SYMBOL}_{category}/{stage}`.
"""

import dagster as dg

from .assets.automation import automation_for
from .assets.book import etl_assets_for
from .assets.labels import label_assets_for
from .assets.ml import ml_assets
from .assets.predictions import prediction_assets_for
from .resources import resources
from .settings import configured_instruments

INSTRUMENTS = configured_instruments()
sensors, schedules = automation_for(INSTRUMENTS)

defs = dg.Definitions(
    assets=[*etl_assets_for(INSTRUMENTS), *label_assets_for(INSTRUMENTS), *ml_assets,
            *prediction_assets_for(INSTRUMENTS)],
    sensors=sensors,
    schedules=schedules,
    resources=resources(),
    executor=dg.multiprocess_executor,
)
