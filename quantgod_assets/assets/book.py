"""raw_zip -> preprocessed_book (daily), its checks, and a DuckDB summary over all days.

The thin Dagster layer over `daily.book` (find / download / convert / check one day),
`daily.runner` (the days on a process pool) and `assets.reporting` (how a range run is recorded).
"""


import datetime as dt
import warnings
from collections.abc import Iterator
from functools import partial
from typing import Any

import dagster as dg
from dagster_duckdb import DuckDBResource

from ..daily import book as book_day
from ..daily.runner import day_span, run_stage, workers_note
from ..logs import run_log
from ..partitions import daily_partitions
from ..resources import BOOK_VIEW, QuantGodSettings, book_view_sql
from ..settings import RawRootMissingError, Settings
from .reporting import partition_days, report_days, run_started

BOOK = dg.AssetKey("preprocessed_book")
RAW = dg.AssetKey("raw_zip")
DAYS_SUMMARY = dg.AssetKey("preprocessed_book_days")
GROUP = "etl"

CHECK_DESCRIPTIONS = {
    "no_nan_or_inf": "No NaN or ±Inf in any float column (null = no book that minute, allowed). Blocking.",
    "schema": "Exactly the 200-level column set, in order, with the expected types, and 1440 rows. Blocking.",
    "gaps": "Share of invalid seconds and the gap intervals: WARN above etl.checks.gap_warn_share "
            "(1 %), ERROR and blocking above gap_fail_share (10 %).",
    "not_crossed": "No minute closes with best bid >= best ask (spread <= 0).",
    "snapshot_agreement": "The replayed book equals every full snapshot Bybit sends after the day's first "
                          "(service restarts, the next day's opening one), level by level over the snapshot's "
                          "depth: WARN naming the first disagreeing level (ours vs Bybit's) and whether a "
                          "crossed-book repair came before it. Not blocking.",
}

# backfill_policy is "beta" in Dagster 1.13 but is what makes a range one run; say it once, here
warnings.filterwarnings("ignore", message=r".*`backfill_policy`.*", category=dg.BetaWarning)

with warnings.catch_warnings():
    # partitioned check specs are a preview feature in Dagster 1.13; they give one result per day
    warnings.simplefilter("ignore", dg.PreviewWarning)
    BOOK_CHECK_SPECS = [
        dg.AssetCheckSpec(
            name,
            asset=BOOK,
            description=description,
            blocking=name in book_day.BLOCKING_CHECKS,
            partitions_def=daily_partitions,
        )
        for name, description in CHECK_DESCRIPTIONS.items()
    ]


def _preflight(settings: Settings, log) -> None:
    try:
        book_day.preflight(settings)
    except RawRootMissingError as exc:
        log.error(str(exc))
        # from None: the one-line reason is the whole story; a chained cause would print a second
        # stack trace under the step's and again under the run's failure
        raise dg.Failure(description=str(exc)) from None


# ---------------------------------------------------------------------------------------------
# Assets


@dg.asset(
    key=RAW,
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name=GROUP,
    kinds={"zip"},
    description="The day's Bybit order-book archive under QUANTGOD_RAW_ROOT (found recursively, ob200 "
    "preferred over ob500), downloaded from the public archive when missing and download.enabled.",
)
def raw_zip(context: dg.AssetExecutionContext, quantgod: QuantGodSettings) -> Iterator[Any]:
    settings = quantgod.load()
    with run_log("etl", settings.paths.logs_dir, forward_to=context.log, when=run_started(context)) as log:
        _preflight(settings, log)
        outcomes = run_stage(partition_days(context), partial(book_day.find_day, settings=settings),
                             workers=1, log=log)
    yield from report_days(context, RAW, outcomes)


@dg.multi_asset(
    name="preprocessed_book",
    specs=[
        dg.AssetSpec(
            BOOK,
            deps=[RAW],
            group_name=GROUP,
            kinds={"parquet", "polars"},
            description="One day's order book as 1440 one-minute rows (200 levels a side and minute "
            "statistics): {DATA_DIR}/L2/pre_processed/{YYYY-MM-DD}.parquet, written atomically.",
        )
    ],
    check_specs=BOOK_CHECK_SPECS,
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    # optional outputs: a range run reports each day itself and may end failed after some days
    can_subset=True,
)
def preprocessed_book(context: dg.AssetExecutionContext, quantgod: QuantGodSettings) -> Iterator[Any]:
    settings = quantgod.load()
    days = partition_days(context)
    materialize = BOOK in context.selected_asset_keys
    workers = settings.etl.worker_count(len(days)) if materialize else 1
    with run_log("etl", settings.paths.logs_dir, forward_to=context.log, when=run_started(context)) as log:
        log.info(f"ETL {day_span(days)}: {len(days)} day(s), {settings.symbol}, {workers_note(workers)}")
        if materialize:
            _preflight(settings, log)
        work = book_day.produce_day if materialize else book_day.check_day  # checks only: read the day
        outcomes = run_stage(days, partial(work, settings=settings), workers=workers, log=log)
    yield from report_days(context, BOOK, outcomes, materialize=materialize)


@dg.asset(
    key=DAYS_SUMMARY,
    deps=[BOOK],
    group_name=GROUP,
    kinds={"duckdb"},
    description="Every preprocessed day at a glance, read through DuckDB's read-only view over the "
    "Parquet files: rows, valid share, crossed minutes, price range.",
    check_specs=[
        dg.AssetCheckSpec(
            "days_complete",
            asset=DAYS_SUMMARY,
            description="Every day between the first and the last has a file of 1440 rows.",
        )
    ],
)
def preprocessed_book_days(
    context: dg.AssetExecutionContext, quantgod: QuantGodSettings, duckdb: DuckDBResource
) -> dg.MaterializeResult:
    import polars as pl

    from ..orderbook.quality import markdown_table

    settings = quantgod.load()
    files = sorted(settings.paths.preprocessed_dir.glob("*.parquet"))
    if not files:
        raise dg.Failure(description=f"no preprocessed days under {settings.paths.preprocessed_dir}")
    with duckdb.get_connection() as conn:
        conn.execute(book_view_sql(settings.paths.preprocessed_glob()))
        cursor = conn.execute(
            f"""
            SELECT regexp_extract(filename, '(\\d{{4}}-\\d{{2}}-\\d{{2}})\\.parquet$', 1) AS day,
                   count(*) AS rows,
                   round(sum(valid_seconds) / 86400.0, 6) AS valid_share,
                   count(*) FILTER (WHERE spread <= 0) AS crossed_minutes,
                   min(mid_low) AS mid_low,
                   max(mid_high) AS mid_high
            FROM {BOOK_VIEW} GROUP BY 1 ORDER BY 1
            """
        )
        columns = [d[0] for d in cursor.description]
        frame = pl.DataFrame(cursor.fetchall(), schema=columns, orient="row")
    days = [dt.date.fromisoformat(d) for d in frame["day"]]
    expected = {days[0] + dt.timedelta(days=i) for i in range((days[-1] - days[0]).days + 1)}
    missing = sorted(expected - set(days))
    short = frame.filter(frame["rows"] != 1440)["day"].to_list()
    passed = not missing and not short
    return dg.MaterializeResult(
        metadata={
            "days": len(days),
            "first_day": str(days[0]),
            "last_day": str(days[-1]),
            "mean_valid_share": round(float(frame.select(pl.col("valid_share").mean()).item()), 6),
            "days_table": dg.MetadataValue.md(markdown_table(frame.tail(31))),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="days_complete",
                passed=passed,
                description="all days present with 1440 rows" if passed
                else f"{len(missing)} missing day(s), {len(short)} day(s) without 1440 rows",
                metadata={
                    "missing_days": dg.MetadataValue.json([str(d) for d in missing[:100]]),
                    "short_days": dg.MetadataValue.json(short[:100]),
                },
            )
        ],
    )


etl_assets = [raw_zip, preprocessed_book, preprocessed_book_days]
