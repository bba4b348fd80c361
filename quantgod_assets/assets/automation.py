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

Two schedules, off like the sensor until turned on (etl.yaml `automation:` or the UI):
- `daily_download` (`download_cron`, started with `enabled` when `download.enabled`): yesterday's
  day (UTC; Bybit publishes D on D+1) through raw_zip (which downloads it) -> preprocessed_book ->
  labelled_frame (+ predictions with a champion);
- `retrain` (`retrain_cron`, started by `retrain: true`): optimization then model.
"""

import datetime as dt

import dagster as dg

from ..archive import archive_days
from ..automation import days_to_relabel, new_days
from ..resources import QuantGodSettings
from ..settings import automation_settings
from .book import BOOK, RAW
from .labels import LABELS
from .ml import MODEL, OPTIMIZATION
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


def _status(on: bool) -> dg.DefaultScheduleStatus:
    return dg.DefaultScheduleStatus.RUNNING if on else dg.DefaultScheduleStatus.STOPPED


@dg.schedule(
    name="daily_download",
    cron_schedule=AUTOMATION.download_cron,
    execution_timezone="UTC",
    target=[RAW, BOOK, LABELS, PREDICTIONS],
    default_status=_status(AUTOMATION.enabled),
    description="Yesterday's day (UTC) downloaded and processed: raw_zip -> preprocessed_book -> labelled_frame "
    "(+ predictions with a champion). Skips unless etl.yaml download.enabled.",
)
def daily_download(context: dg.ScheduleEvaluationContext, quantgod: QuantGodSettings):
    settings = quantgod.load()
    if not settings.etl.download.enabled:
        return dg.SkipReason("download.enabled is false in etl.yaml: the archive root is only read (new_archive_days)")
    day = (context.scheduled_execution_time.astimezone(dt.UTC) - dt.timedelta(days=1)).date()
    assets = [RAW, BOOK, LABELS, *([PREDICTIONS] if settings.paths.champion_path.is_file() else [])]
    return dg.RunRequest(run_key=f"download-{day}", partition_key=day.isoformat(), asset_selection=assets,
                         tags={"quantgod/trigger": "daily_download"})


retrain = dg.ScheduleDefinition(
    name="retrain",
    cron_schedule=AUTOMATION.retrain_cron,
    execution_timezone="UTC",
    target=dg.AssetSelection.assets(OPTIMIZATION, MODEL),
    default_status=_status(AUTOMATION.retrain),
    description="The search and the final model again over training.yaml's data range (a new study when the "
    "days changed; the champion moves only by the walk-forward rule). Off until etl.yaml automation.retrain.",
)


automation_sensors = [new_archive_days]
automation_schedules = [daily_download, retrain]
