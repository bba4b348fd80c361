"""The daily ETL assets, materialized in-process on generated short days, and the quality checks."""

from __future__ import annotations

import datetime as dt
import re
import threading

import dagster as dg
import numpy as np
import polars as pl
import pytest

from quantgod_assets.assets.book import book_assets, days_summary_asset
from quantgod_assets.orderbook import quality
from quantgod_assets.orderbook.schema import MINUTES_PER_DAY, OUT_LEVELS, book_schema
from quantgod_assets.resources import resources
from quantgod_assets.settings import DEFAULT_INSTRUMENT
from quantgod_assets.storage import write_parquet_atomic

from .builders import DAY1, DAY2, materialize

raw_zip, preprocessed_book = book_assets(DEFAULT_INSTRUMENT)
preprocessed_book_days = days_summary_asset([DEFAULT_INSTRUMENT])

BOOK = dg.AssetKey(["BTCUSDT_linear", "preprocessed_book"])

# ---------------------------------------------------------------------------------------------
# The checks as plain functions, on frames built to pass and to fail them

def good_frame() -> pl.DataFrame:
    schema = book_schema()
    n = MINUTES_PER_DAY
    start = dt.datetime(2025, 3, 14, tzinfo=dt.UTC)
    data: dict[str, object] = {"ts": [start + dt.timedelta(minutes=i) for i in range(n)]}
    mid = 80_000 + np.cumsum(np.full(n, 0.5))
    for i in range(OUT_LEVELS):
        data[f"bid_px_{i}"] = mid - 0.05 - 0.1 * i
        data[f"bid_sz_{i}"] = np.full(n, 1.5)
        data[f"ask_px_{i}"] = mid + 0.05 + 0.1 * i
        data[f"ask_sz_{i}"] = np.full(n, 2.0)
    for name in ("mid_open", "mid_high", "mid_low", "mid_close", "micro_price", "micro_price_mean"):
        data[name] = mid
    data["spread"] = data["spread_mean"] = np.full(n, 0.1)
    for name in ("imbalance_1", "imbalance_5", "imbalance_20", "imbalance_200"):
        data[name] = np.full(n, -0.14)
    data["n_msgs"] = np.full(n, 600)
    data["valid_seconds"] = np.full(n, 60)
    return pl.DataFrame(data).cast(dict(schema)).select(schema.names())

def with_values(frame: pl.DataFrame, column: str, rows: list[int], value) -> pl.DataFrame:
    values = frame[column].to_list()
    for r in rows:
        values[r] = value
    return frame.with_columns(pl.Series(column, values, dtype=frame.schema[column]))

def by_name(outcomes):
    return {o.name: o for o in outcomes}

def test_a_good_day_passes_every_check():
    outcomes = quality.run_checks(good_frame())
    assert [o.name for o in outcomes] == list(quality.CHECK_NAMES)
    assert all(o.passed for o in outcomes), [o.description for o in outcomes if not o.passed]

def test_nulls_are_allowed_nan_and_inf_are_not():
    frame = with_values(good_frame(), "bid_px_7", [3, 4], None)
    assert quality.check_no_nan_or_inf(frame).passed
    frame = with_values(frame, "bid_px_3", [10, 11], float("nan"))
    frame = with_values(frame, "micro_price", [20], float("inf"))
    outcome = quality.check_no_nan_or_inf(frame)
    assert not outcome.passed and outcome.severity == "ERROR"
    assert outcome.metadata["nan"] == 2 and outcome.metadata["inf"] == 1
    assert outcome.metadata["bad_columns"] == {"bid_px_3": {"nan": 2, "inf": 0}, "micro_price": {"nan": 0, "inf": 1}}
    assert outcome.metadata["first_bad_minutes"] == ["00:10", "00:11", "00:20"]
    assert "NaN/Inf found" in outcome.description and "bid_px_3" in outcome.details_md

@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda f: f.drop("ask_sz_199"), "missing.*ask_sz_199"),
        (lambda f: f.with_columns(pl.lit(1.0).alias("extra")), "unexpected.*extra"),
        (lambda f: f.select(["ts", "bid_sz_0", "bid_px_0", *f.columns[3:]]), "out of order from position 1"),
        (lambda f: f.with_columns(pl.col("valid_seconds").cast(pl.Int32)), "wrong type.*valid_seconds"),
        (lambda f: f.head(1439), "1439 rows"),
    ],
)
def test_schema_check_says_what_is_wrong(damage, words):
    outcome = quality.check_schema(damage(good_frame()))
    assert not outcome.passed and outcome.severity == "ERROR"
    assert re.search(words, outcome.description), outcome.description

def test_gaps_warn_above_1_percent_and_fail_above_the_limit():
    frame = good_frame()
    assert quality.check_gaps(frame).passed
    warn = with_values(frame, "valid_seconds", list(range(100, 130)), 0)  # 30 min: 2.1 %
    outcome = quality.check_gaps(warn, 0.01, 0.10)
    assert not outcome.passed and outcome.severity == "WARN"
    assert outcome.metadata["gap_intervals"] == ["01:40:00-02:10:00"]
    assert outcome.metadata["invalid_seconds"] == 1800
    fail = with_values(frame, "valid_seconds", list(range(600, 800)), 0)  # 200 min: 13.9 %
    outcome = quality.check_gaps(fail, 0.01, 0.10)
    assert not outcome.passed and outcome.severity == "ERROR" and "10%" in outcome.description
    assert quality.check_gaps(fail, 0.01, 0.20).severity == "WARN"
    # the engine's own second-resolution intervals are used when given
    outcome = quality.check_gaps(fail, intervals=[("10:00:00", "13:20:00")])
    assert outcome.metadata["gap_intervals"] == ["10:00:00-13:20:00"]

def test_crossed_minutes_are_found():
    frame = good_frame()
    frame = with_values(frame, "bid_px_0", [61], float(frame["ask_px_0"][61]) + 1.0)
    frame = with_values(frame, "spread", [61], -1.0)
    outcome = quality.check_not_crossed(frame)
    assert not outcome.passed and outcome.metadata["crossed_minutes"] == 1
    assert outcome.metadata["first_crossed_minutes"] == ["01:01"]

# ---------------------------------------------------------------------------------------------
# In-process Dagster

def test_one_partition_in_process(qg_env):
    result = materialize([raw_zip, preprocessed_book], partition=DAY1)
    assert result.success
    path = qg_env.preprocessed(DAY1)
    frame = pl.read_parquet(path)
    assert frame.height == 1440 and frame.schema == book_schema()

    raw = result.asset_materializations_for_node("BTCUSDT_linear__raw_zip")[0]
    assert raw.partition == "2025-03-14" and raw.metadata["depth"].value == 200
    assert raw.metadata["path"].value.endswith("2025/2025-03-14_BTCUSDT_ob200.data.zip")

    [book] = result.asset_materializations_for_node("BTCUSDT_linear__preprocessed_book")
    md = book.metadata
    assert book.partition == "2025-03-14"
    assert md["rows"].value == 1440 and md["bytes"].value == path.stat().st_size
    assert md["path"].value == str(path.resolve())
    assert md["messages"].value > 5000 and md["snapshots"].value == 1
    assert 0 < md["valid_share"].value < 0.02 and md["mb_per_s"].value > 0
    assert md["preview"].value.startswith("| ts | mid_close | micro_price |")
    assert md["micro_price"].value.startswith("![micro_price](data:image/png;base64,iVBOR")
    assert len(md["micro_price"].value) < 60_000
    assert md["gap_intervals"].value == ["00:10:00-24:00:00"] or md["gap_intervals"].value[0].endswith("24:00:00")

    # a short day holds no snapshot after its first: none compared, the check passes and says so
    assert md["snapshots_compared"].value == 0 and md["snapshots_disagreeing"].value == 0

    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(evaluations) == {"no_nan_or_inf", "schema", "gaps", "not_crossed", "snapshot_agreement"}
    assert all(e.passed for e in evaluations.values())
    assert "no snapshot compared" in evaluations["snapshot_agreement"].description
    assert {e.partition for e in evaluations.values()} == {"2025-03-14"}

    [log] = list((qg_env.logs_dir / "etl").glob("etl_*.log"))
    text = log.read_text()
    assert "[INFO]  Processing: 2025-03-14_BTCUSDT_ob200.data.zip" in text
    assert "[INFO]  Rows after resample: 1440" in text
    assert f"[INFO]  Saved: {path.as_posix()} (0.3 MB)" in text or "[INFO]  Saved: " in text

    # re-running replaces exactly that day
    before = path.stat().st_mtime_ns
    assert materialize([preprocessed_book], partition=DAY1).success
    assert path.stat().st_mtime_ns >= before and pl.read_parquet(path).equals(frame)
    assert sorted(p.name for p in path.parent.iterdir()) == ["2025-03-14.parquet"]

def test_blocking_gap_check_fails_the_run_with_the_intervals(qg_env):
    assert materialize([preprocessed_book], partition=DAY1).success  # gaps allowed: a day is published
    path = qg_env.preprocessed(DAY1)
    good = path.read_bytes()
    qg_env.set_etl(gap_warn_share=0.01, gap_fail_share=0.10)
    result = materialize([preprocessed_book], partition=DAY1)
    assert not result.success
    # a day failing a blocking check never replaces the previous one, and is not recorded
    assert path.read_bytes() == good and sorted(p.name for p in path.parent.iterdir()) == [path.name, "rejected"]
    rejected = path.parent / "rejected" / path.name
    assert pl.read_parquet(rejected).height == 1440
    assert result.asset_materializations_for_node("BTCUSDT_linear__preprocessed_book") == []
    failure = result.failure_data_for_node("BTCUSDT_linear__preprocessed_book").user_failure_data.description
    assert "check gaps failed" in failure and str(rejected) in failure
    [gaps] = [e for e in result.get_asset_check_evaluations() if e.check_name == "gaps"]
    assert not gaps.passed and gaps.severity == dg.AssetCheckSeverity.ERROR
    assert gaps.metadata["invalid_share"].value > 0.9
    assert gaps.metadata["gap_intervals"].value[0].endswith("-24:00:00")
    assert "above the 10% limit" in gaps.description
    text = "".join(p.read_text() for p in (qg_env.logs_dir / "etl").glob("etl_*.log"))
    assert "[WARNING] Significant gaps" in text or "[ERROR] Significant gaps" in text
    assert f"[WARNING] Not published: {path.as_posix()} (the previous file is kept); the rejected output is" in text

def test_checks_fail_through_dagster_on_a_day_built_to_fail_them(qg_env):
    day = dt.date(2025, 4, 1)
    frame = good_frame()
    frame = with_values(frame, "bid_px_3", [10], float("nan"))
    frame = with_values(frame, "valid_seconds", list(range(600, 800)), 0)
    frame = with_values(frame, "spread", [61], -0.1)
    frame = frame.with_columns(pl.lit(0.0).alias("unexpected"))
    path = qg_env.preprocessed(day)
    path.parent.mkdir(parents=True)
    # the replay's snapshot figures travel in the file's metadata: a checks-only run reads them
    first = quality.SnapshotDisagreement(1_743_483_600_250, "bid", 4, 84325.1, 0.5, 84325.1, 0.7, True)
    write_parquet_atomic(frame, path, quality.SnapshotAgreement(2, 1, 1, 1, first).parquet_metadata())
    qg_env.set_etl(gap_warn_share=0.01, gap_fail_share=0.10)
    checks_job = dg.define_asset_job("book_checks", selection=dg.AssetSelection.checks_for_assets(BOOK))
    defs = dg.Definitions(assets=[raw_zip, preprocessed_book], jobs=[checks_job], resources=resources())
    result = defs.resolve_job_def("book_checks").execute_in_process(
        # a checks-only selection has no asset to take the partitions from: pass the key as a tag
        tags={"dagster/partition": day.isoformat()}, raise_on_error=False
    )
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(evaluations) == {"no_nan_or_inf", "schema", "gaps", "not_crossed", "snapshot_agreement"}
    assert not any(e.passed for e in evaluations.values())
    snapshots = evaluations["snapshot_agreement"]
    assert snapshots.severity == dg.AssetCheckSeverity.WARN
    assert "bid level 4 at 2025-04-01 05:00:00.250 UTC: ours 84325.1 x 0.5, Bybit's 84325.1 x 0.7" in \
        snapshots.description
    assert "a crossed-book repair removed levels" in snapshots.description
    assert snapshots.metadata["first_disagreement"].value["level"] == 4
    assert evaluations["no_nan_or_inf"].metadata["nan"].value == 1
    assert "unexpected" in evaluations["schema"].description
    assert evaluations["gaps"].severity == dg.AssetCheckSeverity.ERROR
    assert evaluations["not_crossed"].metadata["crossed_minutes"].value == 1
    assert "details" in evaluations["not_crossed"].metadata
    assert not result.success  # blocking checks failed
    assert result.asset_materializations_for_node("BTCUSDT_linear__preprocessed_book") == []

def test_missing_archive_with_download_off_is_a_clear_failure(qg_env):
    result = materialize([raw_zip, preprocessed_book], partition=dt.date(2025, 5, 1))
    assert not result.success
    failure = result.failure_data_for_node("BTCUSDT_linear__raw_zip")
    message = failure.user_failure_data.description
    assert "2025-05-01" in message and "download is off" in message

def test_missing_root_names_the_setting(qg_env, monkeypatch):
    monkeypatch.setenv("QUANTGOD_RAW_ROOT", str(qg_env.root / "unmounted"))
    result = materialize([preprocessed_book], partition=DAY1)
    assert not result.success
    message = result.failure_data_for_node("BTCUSDT_linear__preprocessed_book").user_failure_data.description
    assert "QUANTGOD_RAW_ROOT" in message and "mount may be down" in message

def test_raw_zip_downloads_a_missing_day(qg_env, short_archives):
    from .builders import ArchiveServer

    day = dt.date(2025, 6, 2)
    server = ArchiveServer()
    server.files[f"/orderbook/linear/BTCUSDT/{day}_BTCUSDT_ob200.data.zip"] = short_archives[DAY1].read_bytes()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        qg_env.set_etl(download_enabled=True, download_base_url=server.base_url)
        result = materialize([raw_zip], partition=day)
    finally:
        server.shutdown()
        server.server_close()
    assert result.success
    [event] = result.asset_materializations_for_node("BTCUSDT_linear__raw_zip")
    assert event.metadata["downloaded_from"].value.startswith("http://127.0.0.1:")
    assert (qg_env.raw_root / "2025" / f"{day}_BTCUSDT_ob200.data.zip").is_file()

def test_duckdb_summary_over_the_days(qg_env):
    assert materialize([preprocessed_book], partition=DAY1).success
    assert materialize([preprocessed_book], partition=DAY2).success
    result = materialize([preprocessed_book_days])
    assert result.success
    [event] = result.asset_materializations_for_node("preprocessed_book_days")
    assert event.metadata["BTCUSDT_linear_days"].value == 2
    assert event.metadata["BTCUSDT_linear_first_day"].value == "2025-03-14"
    assert event.metadata["BTCUSDT_linear_last_day"].value == "2025-03-15"
    [check] = result.get_asset_check_evaluations()
    assert check.passed
