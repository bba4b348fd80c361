"""The labelling assets: labelled_frame in-process and through the CLI, class_balance, label_distribution.

Days are preprocessed frames built from price paths whose labels are known exactly:
`day_prices(b)` is flat at b except minutes 200-299 at -0.6 % and 600-699 at +1 %, so with
H = 60 minutes SELL = 120 rows (t in 140-199 and 640-699), BUY = 60 (t in 540-599) plus the
tail's 60 when the next day starts 1 % higher, NEUTRAL = 1200.
"""

import datetime as dt
import re

import dagster as dg
import numpy as np
import polars as pl
import pytest
import yaml

from quantgod_assets.assets.labels import NEXT_DAY_MAPPING, distribution_asset, label_assets_for_instrument
from quantgod_assets.labelling import labelled_distribution, month_table
from quantgod_assets.launch import materialize_range
from quantgod_assets.orderbook.schema import book_columns
from quantgod_assets.partitions import daily_partitions
from quantgod_assets.resources import resources
from quantgod_assets.settings import DEFAULT_INSTRUMENT

from .builders import DAY1, DAY2, QuantGodEnv, make_day_frame, make_env, materialize

labelled_frame = label_assets_for_instrument(DEFAULT_INSTRUMENT)
label_distribution = distribution_asset([DEFAULT_INSTRUMENT])

LABELS = dg.AssetKey(["BTCUSDT_linear", "labelled_frame"])
BOOK = dg.AssetKey(["BTCUSDT_linear", "preprocessed_book"])
SUFFIX = "SELL_0004_BUY_0008_1h"
DAY3 = DAY2 + dt.timedelta(days=1)
BASE = 30_000.0
RUN_LOG = re.compile(rf"^labelling_{SUFFIX}_BTCUSDT_linear_\d{{8}}_\d{{6}}\.log$")

def day_prices(base: float = BASE) -> np.ndarray:
    prices = np.full(1440, base)
    prices[200:300] = base * (1 - 0.006)
    prices[600:700] = base * (1 + 0.01)
    return prices

def rare_sell_prices(base: float = BASE) -> np.ndarray:
    """SELL only for t in 440-449 (10 of 1380 labelled rows, 0.7 %); BUY for 500-509 and 940-999."""
    prices = np.full(1440, base)
    prices[500:510] = base * 0.99
    prices[1000:] = base * 1.01
    return prices

@pytest.fixture
def lab_env(tmp_path, monkeypatch) -> QuantGodEnv:
    env = make_env(tmp_path, {})
    for key, value in env.env().items():
        monkeypatch.setenv(key, value)
    return env

def write_day(env: QuantGodEnv, day: dt.date, prices: np.ndarray) -> None:
    path = env.preprocessed(day)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_day_frame(day, prices).write_parquet(path)

def labelled(env: QuantGodEnv, day: dt.date, suffix: str = SUFFIX):
    return env.labelled_dir() / suffix / f"{day.isoformat()}.parquet"

def user_messages(instance: dg.DagsterInstance, result) -> list[str]:
    return [e.user_message for e in instance.all_logs(result.run_id) if e.dagster_event is None]

def set_labelling(env: QuantGodEnv, **changes) -> None:
    path = env.config_dir / "labelling.yaml"
    data = yaml.safe_load(path.read_text()) or {}
    data.update(changes)
    path.write_text(yaml.safe_dump(data))

# ---------------------------------------------------------------------------------------------

def test_definitions_wire_labels_to_the_book_of_d_and_d_plus_1():
    from quantgod_assets.definitions import defs

    assets_def = defs.resolve_assets_def(LABELS)
    assert assets_def.partitions_def == daily_partitions
    assert assets_def.backfill_policy == dg.BackfillPolicy.single_run()
    mapping = assets_def.get_partition_mapping(BOOK)
    assert isinstance(mapping, dg.TimeWindowPartitionMapping)
    assert (mapping.start_offset, mapping.end_offset) == (0, 1)
    upstream = NEXT_DAY_MAPPING.get_upstream_mapped_partitions_result_for_partitions(
        daily_partitions.subset_with_partition_keys(["2025-03-14"]), daily_partitions, daily_partitions
    ).partitions_subset
    assert sorted(upstream.get_partition_keys()) == ["2025-03-14", "2025-03-15"]
    [spec] = assets_def.check_specs
    assert spec.name == "class_balance" and spec.blocking
    assert defs.resolve_assets_def("label_distribution").partitions_def is None

def test_tail_is_null_without_the_next_day_and_filled_after_it_arrives(lab_env):
    write_day(lab_env, DAY1, day_prices())
    with dg.DagsterInstance.ephemeral() as instance:
        result = materialize([labelled_frame], instance=instance, partition=DAY1)
        assert result.success
        frame = pl.read_parquet(labelled(lab_env, DAY1))
        assert frame.columns == [*book_columns(), "fwd_return", "target"]
        assert frame.height == 1440 and frame["target"].dtype == pl.Int8
        assert frame["target"].tail(60).null_count() == 60 and frame["target"].head(1380).null_count() == 0
        [event] = result.asset_materializations_for_node("BTCUSDT_linear__labelled_frame")
        md = {k: v.value for k, v in event.metadata.items()}
        assert event.partition == "2025-03-14"
        assert md["path"] == str(labelled(lab_env, DAY1).resolve())
        assert (md["rows"], md["labelled_rows"], md["unlabelled_rows"]) == (1440, 1380, 60)
        assert md["counts"] == {"SELL": 120, "NEUTRAL": 1200, "BUY": 60}
        assert (md["sell_count"], md["neutral_count"], md["buy_count"]) == (120, 1200, 60)
        assert md["sell_share"] == round(120 / 1380, 6) and md["shares"]["BUY"] == round(60 / 1380, 6)
        assert md["next_day_present"] is False and md["suffix"] == SUFFIX
        assert md["distribution"] == "2025-03-14.parquet → SELL: 8.7% | NEU: 87.0% | BUY: 4.3%"
        [check] = result.get_asset_check_evaluations()
        assert check.check_name == "class_balance" and check.passed and check.partition == "2025-03-14"
        assert check.metadata["counts"].value == {"SELL": 120, "NEUTRAL": 1200, "BUY": 60}
        first_messages = user_messages(instance, result)

        # D+1 arrives (1 % higher): materializing D again labels its tail BUY
        write_day(lab_env, DAY2, day_prices(BASE * 1.01))
        result = materialize([labelled_frame], instance=instance, partition=DAY1)
        assert result.success
        frame = pl.read_parquet(labelled(lab_env, DAY1))
        assert frame["target"].null_count() == 0
        assert frame["target"].tail(60).to_list() == [2] * 60
        assert frame["fwd_return"].tail(60).to_numpy() == pytest.approx(np.full(60, 0.01))
        [event] = result.asset_materializations_for_node("BTCUSDT_linear__labelled_frame")
        assert event.metadata["next_day_present"].value is True
        assert event.metadata["counts"].value == {"SELL": 120, "NEUTRAL": 1200, "BUY": 120}
        assert sorted(p.name for p in labelled(lab_env, DAY1).parent.iterdir()) == ["2025-03-14.parquet"]

    # the run log and Dagster's log say the same lines
    assert "Config: lookahead=60, short=-0.004, long=0.008" in first_messages
    assert "2025-03-14.parquet → SELL: 8.7% | NEU: 87.0% | BUY: 4.3%" in first_messages
    assert "FINAL DISTRIBUTION → SELL: 8.7% | NEU: 87.0% | BUY: 4.3%" in first_messages
    assert any("no preprocessed 2025-03-15 yet" in m for m in first_messages)

    folder = lab_env.logs_dir / "labelling"
    run_logs = sorted(p.name for p in folder.glob("*.log") if p.name != "labelling_processing.log")
    assert run_logs and all(RUN_LOG.match(name) for name in run_logs)
    history = (folder / "labelling_processing.log").read_text()
    assert history.count("[INFO]  Config: lookahead=60, short=-0.004, long=0.008") == 2  # appended, not replaced
    assert "[INFO]  2025-03-14.parquet → SELL: 8.7% | NEU: 87.0% | BUY: 4.3%" in history
    assert "[INFO]  2025-03-14.parquet → SELL: 8.3% | NEU: 83.3% | BUY: 8.3%" in history
    assert "[INFO]  FINAL DISTRIBUTION → SELL: 8.3% | NEU: 83.3% | BUY: 8.3%" in history
    lines = history.splitlines()
    assert re.match(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} \[INFO\]  Config: ", lines[0])
    newest = (folder / run_logs[-1]).read_text()
    assert "FINAL DISTRIBUTION → SELL: 8.3% | NEU: 83.3% | BUY: 8.3%" in newest

def test_other_settings_write_their_own_suffix_folder(lab_env):
    write_day(lab_env, DAY1, day_prices())
    assert materialize([labelled_frame], partition=DAY1).success
    set_labelling(lab_env, lookahead=30, threshold_short=-0.005)
    result = materialize([labelled_frame], partition=DAY1)
    assert result.success
    suffix = "SELL_0005_BUY_0008_30m"
    assert labelled(lab_env, DAY1, suffix).is_file() and labelled(lab_env, DAY1).is_file()
    [event] = result.asset_materializations_for_node("BTCUSDT_linear__labelled_frame")
    assert event.metadata["suffix"].value == suffix and event.metadata["lookahead"].value == 30
    assert pl.read_parquet(labelled(lab_env, DAY1, suffix))["target"].tail(30).null_count() == 30
    [log] = list((lab_env.logs_dir / "labelling").glob(f"labelling_{suffix}_*.log"))
    assert "[INFO]  Config: lookahead=30, short=-0.005, long=0.008" in log.read_text()

def test_class_balance_fails_a_one_class_day_and_blocks_downstream(lab_env):
    write_day(lab_env, DAY1, day_prices())
    assert materialize([labelled_frame], partition=DAY1).success
    good = labelled(lab_env, DAY1).read_bytes()

    write_day(lab_env, DAY1, np.full(1440, BASE))  # flat: every labelled minute is NEUTRAL
    result = materialize([labelled_frame], partition=DAY1)
    assert not result.success
    [check] = result.get_asset_check_evaluations()
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert check.metadata["missing_classes"].value == ["SELL", "BUY"]
    assert check.metadata["counts"].value == {"SELL": 0, "NEUTRAL": 1380, "BUY": 0}
    assert "SELL, BUY absent" in check.description
    assert check.target_materialization_data is None  # the failure is the rejected output's, not the good file's
    # the day is neither published nor recorded: the good file of the first run stays, no temp file left
    assert labelled(lab_env, DAY1).read_bytes() == good
    folder = labelled(lab_env, DAY1).parent
    assert sorted(p.name for p in folder.iterdir()) == ["2025-03-14.parquet", "rejected"]
    assert pl.read_parquet(folder / "rejected" / "2025-03-14.parquet")["target"].drop_nulls().unique().to_list() == [1]
    assert result.asset_materializations_for_node("BTCUSDT_linear__labelled_frame") == []
    text = "".join(p.read_text() for p in (lab_env.logs_dir / "labelling").glob(f"labelling_{SUFFIX}_*.log"))
    assert "[ERROR] Failed: 2025-03-14.parquet: check class_balance failed" in text
    assert "Not published: " in text and "(the previous file is kept); the rejected output is " in text

def test_a_range_with_a_day_failing_its_blocking_check_publishes_the_others(lab_env):
    write_day(lab_env, DAY1, day_prices())
    write_day(lab_env, DAY2, np.full(1440, BASE * 1.01))  # one class only: fails class_balance
    write_day(lab_env, DAY3, day_prices())
    result = materialize([labelled_frame], partition=(DAY1, DAY3))
    assert not result.success
    events = result.asset_materializations_for_node("BTCUSDT_linear__labelled_frame")
    assert sorted(e.partition for e in events) == ["2025-03-14", "2025-03-16"]
    checks = {e.partition: e for e in result.get_asset_check_evaluations()}
    assert sorted(checks) == ["2025-03-14", "2025-03-15", "2025-03-16"]
    assert not checks["2025-03-15"].passed and checks["2025-03-15"].target_materialization_data is None
    assert checks["2025-03-14"].passed and checks["2025-03-14"].target_materialization_data is not None
    failure = result.failure_data_for_node("BTCUSDT_linear__labelled_frame").user_failure_data
    rejected = lab_env.labelled_dir() / SUFFIX / "rejected" / "2025-03-15.parquet"
    assert failure.metadata["failed_days"].value == ["2025-03-15"]
    assert failure.metadata["rejected_outputs"].value == {"2025-03-15": str(rejected)}
    assert rejected.is_file() and not labelled(lab_env, DAY2).exists()
    assert labelled(lab_env, DAY1).is_file() and labelled(lab_env, DAY3).is_file()

def test_class_balance_warns_on_a_rare_class(lab_env):
    write_day(lab_env, DAY1, rare_sell_prices())
    result = materialize([labelled_frame], partition=DAY1)
    assert result.success
    [check] = result.get_asset_check_evaluations()
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["rare_classes"].value == ["SELL"] and check.metadata["missing_classes"].value == []
    assert check.metadata["sell_count"].value == 10 and check.metadata["min_class_share"].value == 0.02
    assert "SELL 0.72%" in check.description
    text = "".join(p.read_text() for p in (lab_env.logs_dir / "labelling").glob(f"labelling_{SUFFIX}_*.log"))
    assert "[WARNING] Class balance 2025-03-14.parquet: rare class(es) (under 2%): SELL 0.72%" in text

    set_labelling(lab_env, min_class_share=0.005)
    [check] = materialize([labelled_frame], partition=DAY1).get_asset_check_evaluations()
    assert check.passed

def test_a_range_labels_every_day_and_names_the_one_that_failed(lab_env):
    write_day(lab_env, DAY1, day_prices())
    write_day(lab_env, DAY2, day_prices(BASE * 1.01))
    later = DAY3 + dt.timedelta(days=1)  # DAY3 has no book: it fails, its neighbours are written
    write_day(lab_env, later, day_prices())
    result = materialize([labelled_frame], partition=(DAY1, later))
    assert not result.success
    failure = result.failure_data_for_node("BTCUSDT_linear__labelled_frame").user_failure_data
    assert "1 of 4 day(s) failed" in failure.description
    assert "2025-03-16" in failure.description and "no preprocessed book" in failure.description
    assert failure.metadata["failed_days"].value == ["2025-03-16"]
    events = {e.partition: e for e in result.asset_materializations_for_node("BTCUSDT_linear__labelled_frame")}
    assert sorted(events) == ["2025-03-14", "2025-03-15", "2025-03-17"]
    assert events["2025-03-14"].metadata["next_day_present"].value is True
    assert events["2025-03-15"].metadata["next_day_present"].value is False  # 03-16 is missing
    checks = {e.partition: e for e in result.get_asset_check_evaluations()}
    assert sorted(checks) == ["2025-03-14", "2025-03-15", "2025-03-17"] and all(c.passed for c in checks.values())
    for day in (DAY1, DAY2, later):
        assert labelled(lab_env, day).is_file()
    text = (lab_env.logs_dir / "labelling" / "labelling_processing.log").read_text()
    assert "[ERROR] Failed: 2025-03-16.parquet: no preprocessed book for 2025-03-16" in text
    assert "[INFO]  2025-03-17.parquet → " in text and "FINAL DISTRIBUTION → " in text

def test_label_distribution_over_all_labelled_days(lab_env):
    write_day(lab_env, DAY1, day_prices())
    write_day(lab_env, DAY2, day_prices(BASE * 1.01))
    for day in (DAY1, DAY2):
        assert materialize([labelled_frame], partition=day).success
    result = materialize([label_distribution])
    assert result.success
    [event] = result.asset_materializations_for_node("label_distribution")
    md = {k: v.value for k, v in event.metadata.items()}
    expected = labelled_distribution(lab_env.labelled_dir() / SUFFIX)
    assert md["counts"] == expected["counts"] == {"SELL": 240, "NEUTRAL": 2400, "BUY": 180}
    assert md["labelled_rows"] == 2820 and md["unlabelled_rows"] == 60
    assert md["days"] == 2 and (md["first_day"], md["last_day"]) == ("2025-03-14", "2025-03-15")
    assert md["suffix"] == SUFFIX and md["buy_share"] == round(180 / 2820, 6)
    assert md["distribution"] == "FINAL DISTRIBUTION → SELL: 8.5% | NEU: 85.1% | BUY: 6.4%"
    assert "| 2025-03 | 2 | 2820 | 240 (8.5%) | 2400 (85.1%) | 180 (6.4%) | 60 |" in md["by_month"]
    assert md["months"]["2025-03"]["counts"] == {"SELL": 240, "NEUTRAL": 2400, "BUY": 180}
    assert md["chart"].startswith("![label distribution](data:image/png;base64,iVBOR")
    assert len(md["chart"]) < 40_000

def test_label_distribution_without_labels_says_what_to_run(lab_env):
    result = materialize([label_distribution])
    assert not result.success
    failure = result.failure_data_for_node("label_distribution").user_failure_data
    assert "materialize labelled_frame first" in failure.description

def test_month_table_splits_months():
    table, months = month_table([("2025-01-31", 0, 5), ("2025-01-31", 1, 15),
                                 ("2025-02-01", 2, 4), ("2025-02-01", None, 1)])
    assert table.splitlines()[2] == "| 2025-01 | 1 | 20 | 5 (25.0%) | 15 (75.0%) | 0 (0.0%) | 0 |"
    assert months["2025-02"] == {"days": 1, "labelled": 4, "counts": {"SELL": 0, "NEUTRAL": 0, "BUY": 4},
                                 "shares": {"SELL": 0.0, "NEUTRAL": 0.0, "BUY": 1.0}, "unlabelled": 1}

def test_cli_range_labels_two_days_in_one_run(lab_env):
    write_day(lab_env, DAY1, day_prices())
    write_day(lab_env, DAY2, day_prices(BASE * 1.01))
    done = materialize_range(DAY1, DAY2, select="BTCUSDT_linear/labelled_frame", env=lab_env.env(), cwd=lab_env.root,
                             capture=True, timeout_s=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert pl.read_parquet(labelled(lab_env, DAY1))["target"].null_count() == 0
    assert pl.read_parquet(labelled(lab_env, DAY2))["target"].tail(60).null_count() == 60
    with dg.DagsterInstance.from_config(str(lab_env.dagster_home)) as instance:
        records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=LABELS), limit=10).records
        assert sorted(r.partition_key for r in records) == ["2025-03-14", "2025-03-15"]
        [run_id] = {r.run_id for r in records}  # one run, both partitions
        checks = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        evaluations = [e.dagster_event.event_specific_data for e in checks]
        assert sorted(e.partition for e in evaluations) == ["2025-03-14", "2025-03-15"]
        assert all(e.passed and e.check_name == "class_balance" for e in evaluations)
        metadata = {r.partition_key: r.asset_materialization.metadata for r in records}
        assert metadata["2025-03-14"]["buy_count"].value == 120
        assert metadata["2025-03-15"]["next_day_present"].value is False
    text = (lab_env.logs_dir / "labelling" / "labelling_processing.log").read_text()
    assert "[INFO]  Config: lookahead=60, short=-0.004, long=0.008" in text
    assert "[INFO]  2025-03-14.parquet → SELL: 8.3% | NEU: 83.3% | BUY: 8.3%" in text
    assert "[INFO]  FINAL DISTRIBUTION → SELL: 8.5% | NEU: 85.1% | BUY: 6.4%" in text

def test_checks_only_run_reads_the_labelled_day(lab_env):
    write_day(lab_env, DAY1, rare_sell_prices())
    assert materialize([labelled_frame], partition=DAY1).success
    checks_job = dg.define_asset_job("label_checks", selection=dg.AssetSelection.checks_for_assets(LABELS))
    defs = dg.Definitions(assets=[labelled_frame], jobs=[checks_job], resources=resources())
    result = defs.resolve_job_def("label_checks").execute_in_process(
        tags={"dagster/partition": DAY1.isoformat()}, raise_on_error=False
    )
    assert result.success
    [check] = result.get_asset_check_evaluations()
    assert check.severity == dg.AssetCheckSeverity.WARN and check.metadata["rare_classes"].value == ["SELL"]
    assert result.asset_materializations_for_node("BTCUSDT_linear__labelled_frame") == []
