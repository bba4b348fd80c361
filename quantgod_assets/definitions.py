"""Assembles the code location: assets, checks, resources, executor. Nothing else."""

import dagster as dg

from .assets.automation import automation_schedules, automation_sensors
from .assets.book import etl_assets
from .assets.labels import label_assets
from .assets.ml import ml_assets
from .assets.predictions import prediction_assets
from .resources import resources

defs = dg.Definitions(
    assets=[*etl_assets, *label_assets, *ml_assets, *prediction_assets],
    sensors=automation_sensors,
    schedules=automation_schedules,
    resources=resources(),
    executor=dg.multiprocess_executor,
)
