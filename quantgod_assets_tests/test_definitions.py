from __future__ import annotations

import datetime as dt
import subprocess
import sys

import dagster as dg
from dagster_duckdb import DuckDBResource

from quantgod_assets.definitions import defs
from quantgod_assets.launch import materialize_command
from quantgod_assets.partitions import daily_partitions
from quantgod_assets.resources import resources

BOOK = dg.AssetKey(["BTCUSDT_linear", "preprocessed_book"])


def test_definitions_load_with_assets_checks_and_resources():
    repo = defs.get_repository_def()
    assert {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()} >= {
        "BTCUSDT_linear/raw_zip", "BTCUSDT_linear/preprocessed_book", "preprocessed_book_days"
    }
    checks = {(k.asset_key.to_user_string(), k.name) for k in repo.asset_graph.asset_check_keys}
    assert checks >= {
        ("BTCUSDT_linear/preprocessed_book", "no_nan_or_inf"),
        ("BTCUSDT_linear/preprocessed_book", "schema"),
        ("BTCUSDT_linear/preprocessed_book", "gaps"),
        ("BTCUSDT_linear/preprocessed_book", "not_crossed"),
        ("preprocessed_book_days", "days_complete"),
    }
    assert {"duckdb", "quantgod"} <= set(repo.get_top_level_resources())
    assert isinstance(resources()["duckdb"], DuckDBResource)
    job = defs.resolve_implicit_global_asset_job_def()
    assert job.executor_def.name == "multiprocess"


def test_blocking_checks():
    specs = {spec.name: spec for spec in defs.resolve_assets_def(BOOK).check_specs}
    assert {name for name, spec in specs.items() if spec.blocking} == {"no_nan_or_inf", "schema", "gaps"}


def test_one_daily_partitions_object_in_utc_from_the_config():
    assert daily_partitions.timezone == "UTC"
    assert daily_partitions.start.date() == dt.date(2023, 1, 18)
    assert daily_partitions.get_first_partition_key() == "2023-01-18"
    for key in ("raw_zip", "preprocessed_book"):
        assets_def = defs.resolve_assets_def(dg.AssetKey(["BTCUSDT_linear", key]))
        assert assets_def.partitions_def == daily_partitions
        assert assets_def.backfill_policy == dg.BackfillPolicy.single_run()


def test_plain_modules_do_not_import_dagster():
    code = (
        "import sys\n"
        "import quantgod_assets.settings, quantgod_assets.logs, quantgod_assets.archive\n"
        "import quantgod_assets.orderbook.quality, quantgod_assets.daily.book, quantgod_assets.daily.labels\n"
        "import quantgod_assets.daily.runner, quantgod_assets.launch\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'dagster'], 'dagster imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_materialize_command():
    single = materialize_command(dt.date(2025, 3, 14), select="BTCUSDT_linear/preprocessed_book")
    assert single[1:] == ["-m", "dagster", "asset", "materialize", "-m", "quantgod_assets.definitions",
                          "--select", "BTCUSDT_linear/preprocessed_book", "--partition", "2025-03-14"]
    ranged = materialize_command("2025-03-10", dt.date(2025, 3, 16))
    assert ranged[-2:] == ["--partition-range", "2025-03-10...2025-03-16"]
