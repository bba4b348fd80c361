"""The archive sensor: new days on the mount are asked for, the day before is relabelled once its
next day arrived, predictions join when a champion exists, a missing mount is a skip."""

import datetime as dt

import dagster as dg
import pytest

from quantgod_assets.archive import archive_days
from quantgod_assets.assets.automation import automation_for
from quantgod_assets.assets.book import book_assets
from quantgod_assets.automation import days_to_relabel, new_days
from quantgod_assets.labelling import label_day_files
from quantgod_assets.resources import resources
from quantgod_assets.settings import DEFAULT_INSTRUMENT

from .builders import BAD_DAY, DAY1, DAY2, materialize

_, preprocessed_book = book_assets(DEFAULT_INSTRUMENT)
(new_archive_days,), (daily_download, _retrain) = automation_for([DEFAULT_INSTRUMENT])

SUFFIX = "SELL_0004_BUY_0008_1h"


def tick(instance: dg.DagsterInstance):
    """One evaluation of the sensor against `instance`, with the project's resources."""
    context = dg.build_sensor_context(instance=instance, resources=resources())
    return new_archive_days(context)


def selections(requests) -> dict[tuple[str, str], list[str]]:
    """(partition, trigger) -> the asset keys asked for."""
    out = {}
    for r in requests:
        assert r.tags["quantgod/instrument"] == "BTCUSDT_linear"
        assert {k.path[0] for k in r.asset_selection} == {"BTCUSDT_linear"}  # one instrument's assets a request
        out[(r.partition_key, r.tags["quantgod/trigger"])] = sorted(k.path[-1] for k in r.asset_selection)
    return out


def test_new_days_are_newest_first_capped_and_from_the_start_day():
    days = [dt.date(2025, 3, d) for d in range(1, 11)]
    done = {dt.date(2025, 3, 9)}
    assert new_days(days, done, dt.date(2025, 3, 3), 3) == [dt.date(2025, 3, 10), dt.date(2025, 3, 8),
                                                             dt.date(2025, 3, 7)]
    assert new_days(days, set(days), dt.date(2025, 3, 1), 3) == []


def test_archive_days_reads_the_mount_layouts(tmp_path):
    for relative in ("2025/2025-03-10_BTCUSDT_ob200.data.zip", "2025-03-11_BTCUSDT_ob500.data.zip",
                     "BTCUSDT/2025/2025-03-12_BTCUSDT_ob200.data.zip", "2025/2025-03-13_ETHUSDT_ob200.data.zip",
                     "2025/2025-03-14_BTCUSDT_ob50.data.zip", "corrupt/2025-03-15_BTCUSDT_ob200.data.zip"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"zip")
    assert archive_days(tmp_path, "BTCUSDT") == [dt.date(2025, 3, 10), dt.date(2025, 3, 11), dt.date(2025, 3, 12)]


def label(env, day):
    """Labels `day` from its book file and the next day's when present (the labels stage's library)."""
    return label_day_files(env.preprocessed_dir(), env.labelled_dir(), day)


def test_the_sensor_asks_for_new_days_then_relabels_the_day_before(qg_env):
    instance = dg.DagsterInstance.ephemeral()
    asked = selections(tick(instance))
    chain = ["labelled_frame", "preprocessed_book", "raw_zip"]  # no champion yet: no predictions
    assert asked == {(str(day), "new_archive_day"): chain for day in (DAY1, DAY2, BAD_DAY)}

    # DAY1 processed (labelled without its next day): no longer new, nothing to relabel yet
    assert materialize([preprocessed_book], instance=instance, partition=DAY1).success
    label(qg_env, DAY1)
    asked = selections(tick(instance))
    assert set(asked) == {(str(DAY2), "new_archive_day"), (str(BAD_DAY), "new_archive_day")}

    # DAY2's book arrives: DAY1's last hour can be labelled now
    assert materialize([preprocessed_book], instance=instance, partition=DAY2).success
    asked = selections(tick(instance))
    assert asked[(str(DAY1), "next_day_arrived")] == ["labelled_frame"]
    assert (str(DAY2), "new_archive_day") not in asked
    assert days_to_relabel([DAY2], qg_env.labelled_dir(), SUFFIX,
                           qg_env.preprocessed_dir()) == [DAY1]

    # once relabelled with its next day, DAY1 is asked for no more
    label(qg_env, DAY1)
    asked = selections(tick(instance))
    assert (str(DAY1), "next_day_arrived") not in asked


def test_with_a_champion_predictions_join_the_new_days(qg_env):
    champion = qg_env.data_dir / "models" / "BTCUSDT_linear" / "champion.pth"
    champion.parent.mkdir(parents=True)
    champion.write_bytes(b"bundle")  # the sensor only asks whether one exists
    asked = selections(tick(dg.DagsterInstance.ephemeral()))
    assert asked[(str(DAY1), "new_archive_day")] == ["labelled_frame", "predictions", "preprocessed_book", "raw_zip"]


def test_a_missing_archive_root_is_a_skip_that_says_so(qg_env, monkeypatch):
    monkeypatch.setenv("QUANTGOD_RAW_ROOT", str(qg_env.root / "not-mounted"))
    result = tick(dg.DagsterInstance.ephemeral())
    assert isinstance(result, dg.SkipReason) and "does not exist (a mount down?)" in result.skip_message


@pytest.mark.parametrize("enabled", [False, True])
def test_the_sensor_is_off_until_the_setting_turns_it_on(tmp_path, enabled):
    """The definitions, loaded as Dagster loads them, start the sensor only when etl.yaml says so."""
    import os
    import shutil
    import subprocess
    import sys

    from .builders import REPO

    configs = tmp_path / "configs"
    shutil.copytree(REPO / "configs", configs)
    text = (configs / "etl.yaml").read_text()
    automation = "  enabled: false               # off until"  # automation's, not download's
    assert automation in text
    (configs / "etl.yaml").write_text(text.replace(automation, f"  enabled: {str(enabled).lower()}  # off until"))
    code = ("from quantgod_assets.definitions import defs; "
            "print(*[x.name + '=' + x.default_status.value for x in [*defs.sensors, *defs.schedules]])")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "QUANTGOD_CONFIG_DIR": str(configs)},
                          capture_output=True, text=True, timeout=120, check=True)
    state = "RUNNING" if enabled else "STOPPED"
    # the retraining schedule has its own switch (automation.retrain), off in both
    assert done.stdout.split() == [f"new_archive_days={state}", f"daily_download={state}", "retrain=STOPPED"]


def test_the_daily_download_asks_for_yesterday_only_when_downloads_are_on(qg_env):

    def evaluate():
        context = dg.build_schedule_context(instance=dg.DagsterInstance.ephemeral(), resources=resources(),
                                            scheduled_execution_time=dt.datetime(2025, 3, 15, 3, 30, tzinfo=dt.UTC))
        return daily_download(context)

    skipped = evaluate()
    assert isinstance(skipped, dg.SkipReason) and "download.enabled is false" in skipped.skip_message
    import yaml

    etl = qg_env.config_dir / "etl.yaml"
    settings = yaml.safe_load(etl.read_text())
    settings["download"]["enabled"] = True
    etl.write_text(yaml.safe_dump(settings))
    [request] = evaluate()
    assert request.partition_key == "2025-03-14" and request.run_key == "BTCUSDT_linear-download-2025-03-14"
    assert sorted(k.path[-1] for k in request.asset_selection) == ["labelled_frame", "preprocessed_book", "raw_zip"]
