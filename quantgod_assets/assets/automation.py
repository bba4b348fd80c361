"""The archive sensor: new days on the mount are processed without a manual launch.

`new_archive_days` looks at the archive root every `automation.interval_s` seconds (etl.yaml;
the Dagster daemon runs sensors, and `dagster dev` starts one). It is STOPPED until
`automation.enabled: true` or a click in the UI (Automation). Each tick:
For every configured instrument (run keys and tags name it):
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
from collections.abc import Sequence

import dagster as dg

from ..archive import archive_days
from ..automation import days_to_relabel, new_days
from ..resources import QuantGodSettings
from ..settings import Instrument, Settings, automation_settings
from .book import book_key, raw_key
from .labels import labels_key
from .ml import MODEL, OPTIMIZATION
from .predictions import predictions_key

AUTOMATION = automation_settings()


def _daily_keys(instrument: Instrument, with_predictions: bool = True) -> list[dg.AssetKey]:
    keys = [raw_key(instrument), book_key(instrument), labels_key(instrument)]
    return [*keys, predictions_key(instrument)] if with_predictions else keys


def _instrument_requests(context: dg.SensorEvaluationContext, settings: Settings) -> tuple[list, str]:
    """One instrument's requests (new days, days to relabel) and a line saying what was found."""
    instrument = settings.instrument
    root = settings.paths.raw_root
    archive = archive_days(root, instrument.symbol, settings.etl.depths, instrument.category)
    done = {dt.date.fromisoformat(key) for key in context.instance.get_materialized_partitions(book_key(instrument))}
    start = instrument.first_day or settings.etl.partitions_start
    fresh = new_days(archive, done, start, settings.etl.automation.max_days_per_tick)
    # predictions only for the instruments the champion trained on (the others: its test report)
    with_predictions = settings.paths.champion_path.is_file() and instrument in settings.training_instruments
    tags = {"quantgod/instrument": instrument.key}
    requests = [dg.RunRequest(run_key=f"{instrument.key}-day-{day}", partition_key=day.isoformat(),
                              asset_selection=_daily_keys(instrument, with_predictions),
                              tags={**tags, "quantgod/trigger": "new_archive_day"})
                for day in fresh]
    relabel = [day for day in days_to_relabel(sorted(done), settings.paths.labelled_dir, settings.labelling.suffix,
                                              settings.paths.preprocessed_dir) if day >= start]
    requests += [dg.RunRequest(run_key=f"{instrument.key}-relabel-{day}", partition_key=day.isoformat(),
                               asset_selection=[labels_key(instrument)],
                               tags={**tags, "quantgod/trigger": "next_day_arrived"})
                 for day in relabel]
    line = (f"{instrument.key}: {len(archive)} archive day(s), {len(fresh)} new {[str(d) for d in fresh]}, "
            f"relabelling {[str(d) for d in relabel]}"
            + ("" if with_predictions else ", no champion yet: no predictions"))
    return requests, line


def automation_for(instruments: Sequence[Instrument]) -> tuple[list, list]:
    """The archive sensor and the two schedules over every configured instrument."""
    every_daily = [key for i in instruments for key in _daily_keys(i)]

    @dg.sensor(
        name="new_archive_days",
        minimum_interval_seconds=AUTOMATION.interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING if AUTOMATION.enabled else dg.DefaultSensorStatus.STOPPED,
        asset_selection=every_daily,
        description="New days on the archive root, for every instrument -> raw_zip, preprocessed_book, "
        "labelled_frame (and the day before relabelled), predictions when a champion exists. Off until etl.yaml "
        "automation.enabled or the UI.",
    )
    def new_archive_days(context: dg.SensorEvaluationContext, quantgod: QuantGodSettings):
        settings = quantgod.load()
        root = settings.paths.raw_root
        if not root.is_dir():
            return dg.SkipReason(f"archive root {root} does not exist (a mount down?): nothing looked at")
        requests, lines = [], []
        for instrument in instruments:
            found, line = _instrument_requests(context, settings.for_instrument(instrument))
            requests += found
            lines.append(line)
        if not requests:
            return dg.SkipReason(f"under {root}: none new, none to relabel ({'; '.join(lines)})")
        context.log.info("; ".join(lines))
        return requests

    @dg.schedule(
        name="daily_download",
        cron_schedule=AUTOMATION.download_cron,
        execution_timezone="UTC",
        target=every_daily,
        default_status=_status(AUTOMATION.enabled),
        description="Yesterday's day (UTC) of every instrument downloaded and processed: raw_zip -> "
        "preprocessed_book -> labelled_frame (+ predictions with a champion). Skips unless etl.yaml download.enabled.",
    )
    def daily_download(context: dg.ScheduleEvaluationContext, quantgod: QuantGodSettings):
        settings = quantgod.load()
        if not settings.etl.download.enabled:
            return dg.SkipReason("download.enabled is false in etl.yaml: the archive root is only read "
                                 "(new_archive_days)")
        day = (context.scheduled_execution_time.astimezone(dt.UTC) - dt.timedelta(days=1)).date()
        champion = settings.paths.champion_path.is_file()
        return [dg.RunRequest(run_key=f"{i.key}-download-{day}", partition_key=day.isoformat(),
                              asset_selection=_daily_keys(i, champion and i in settings.training_instruments),
                              tags={"quantgod/trigger": "daily_download", "quantgod/instrument": i.key})
                for i in instruments if day >= (i.first_day or settings.etl.partitions_start)]

    retrain = dg.ScheduleDefinition(
        name="retrain",
        cron_schedule=AUTOMATION.retrain_cron,
        execution_timezone="UTC",
        target=dg.AssetSelection.assets(OPTIMIZATION, MODEL),
        default_status=_status(AUTOMATION.retrain),
        description="The search and the final model again over training.yaml's data range (a new study when the "
        "days changed; the champion moves only by the walk-forward rule). Off until etl.yaml automation.retrain.",
    )
    return [new_archive_days], [daily_download, retrain]


def _status(on: bool) -> dg.DefaultScheduleStatus:
    return dg.DefaultScheduleStatus.RUNNING if on else dg.DefaultScheduleStatus.STOPPED
