"""The archive sensor: new days on the mount are processed without a manual launch.

`new_archive_days` looks at the archive root every `automation.interval_s` seconds (etl.yaml;
the Dagster daemon runs sensors, and `dagster dev` starts one). It is STOPPED until
`automation.enabled: true` or a click in the UI (Automation). Each tick:
- every new day D (an archive with no preprocessed book recorded, newest first, at most
  `max_days_per_tick`): one run of raw_zip -> preprocessed_book -> labelled_frame for D, plus
  `predictions` when a champion model exists;
- every labelled day whose next day's book has since arrived: labelled_frame again (its last hour
  was null);
- the archive root missing (a mount down): a skip that says so.
Run keys make every request once: a day whose run failed is not retried by the sensor (a backfill
or a manual run is; the failure names why). What to ask for is decided in `automation.py`.
"""

import datetime as dt

import dagster as dg

from ..archive import archive_days
from ..automation import days_to_relabel, new_days
from ..resources import QuantGodSettings
from ..settings import automation_settings
from .book import BOOK, RAW
from .labels import LABELS
from .predictions import PREDICTIONS

AUTOMATION = automation_settings()


@dg.sensor(
    name="new_archive_days",
    minimum_interval_seconds=AUTOMATION.interval_s,
    default_status=dg.DefaultSensorStatus.RUNNING if AUTOMATION.enabled else dg.DefaultSensorStatus.STOPPED,
    asset_selection=[RAW, BOOK, LABELS, PREDICTIONS],
    description="New days on the archive root -> raw_zip, preprocessed_book, labelled_frame (and the day "
    "before relabelled), predictions when a champion exists. Off until etl.yaml automation.enabled or the UI.",
)
def new_archive_days(context: dg.SensorEvaluationContext, quantgod: QuantGodSettings):
    settings = quantgod.load()
    root = settings.paths.raw_root
    if not root.is_dir():
        return dg.SkipReason(f"archive root {root} does not exist (a mount down?): nothing looked at")
    archive = archive_days(root, settings.symbol, settings.etl.depths)
    done = {dt.date.fromisoformat(key) for key in context.instance.get_materialized_partitions(BOOK)}
    start = settings.etl.partitions_start
    fresh = new_days(archive, done, start, settings.etl.automation.max_days_per_tick)
    with_predictions = settings.paths.champion_path.is_file()
    requests = [dg.RunRequest(run_key=f"day-{day}", partition_key=day.isoformat(),
                              asset_selection=[RAW, BOOK, LABELS, *([PREDICTIONS] if with_predictions else [])],
                              tags={"quantgod/trigger": "new_archive_day"})
                for day in fresh]
    relabel = days_to_relabel(sorted(done), settings.paths.labelled_dir, settings.labelling.suffix,
                              settings.paths.preprocessed_dir)
    requests += [dg.RunRequest(run_key=f"relabel-{day}", partition_key=day.isoformat(), asset_selection=[LABELS],
                               tags={"quantgod/trigger": "next_day_arrived"})
                 for day in relabel if day >= start]
    if not requests:
        return dg.SkipReason(f"{len(archive)} archive day(s) under {root}: none new, none to relabel")
    context.log.info(f"{len(fresh)} new day(s) {[str(d) for d in fresh]}, relabelling {[str(d) for d in relabel]}"
                     + ("" if with_predictions else "; no champion yet: no predictions"))
    return requests


automation_sensors = [new_archive_days]
