"""raw_zip -> preprocessed_book (daily), its checks, and a DuckDB summary over all days.

One `{instrument}/raw_zip` and `{instrument}/preprocessed_book` per configured instrument (a factory
over etl.yaml `instruments:`, keys like `BTCUSDT_linear/preprocessed_book`), all on the one daily
partitions object, so a range over several instruments is one CLI command
(`--select 'key:*/preprocessed_book' --partition-range A...B`) and one UI backfill, one run per range.

The thin Dagster layer over `daily.book` (find / download / convert / check one day),
`daily.runner` (the days on a process pool) and `assets.reporting` (how a range run is recorded).
"""


import warnings
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import dagster as dg
from dagster_duckdb import DuckDBResource

from ..daily import book as book_day
from ..daily.runner import day_span, run_stage, workers_note
from ..logs import run_log
from ..partitions import daily_partitions
from ..resources import QuantGodSettings
from ..settings import Instrument, RawRootMissingError, Settings
from .reporting import metadata_values, partition_days, report_days, run_started

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


def book_key(instrument: Instrument) -> dg.AssetKey:
    return dg.AssetKey([instrument.key, "preprocessed_book"])


def raw_key(instrument: Instrument) -> dg.AssetKey:
    return dg.AssetKey([instrument.key, "raw_zip"])


# backfill_policy is "beta" in Dagster 1.13 but is what makes a range one run; say it once, here
warnings.filterwarnings("ignore", message=r".*`backfill_policy`.*", category=dg.BetaWarning)

def _book_check_specs(book: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    with warnings.catch_warnings():
        # partitioned check specs are a preview feature in Dagster 1.13; they give one result per day
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return [
            dg.AssetCheckSpec(
                name,
                asset=book,
                description=description,
                blocking=name in book_day.BLOCKING_CHECKS,
                partitions_def=daily_partitions,
            )
            for name, description in CHECK_DESCRIPTIONS.items()
        ]


def _preflight(settings: Settings, log) -> None:
    try:
        book_day.preflight(settings)
    except (RawRootMissingError, book_day.LegacyLayoutError) as exc:
        log.error(str(exc))
        # from None: the one-line reason is the whole story; a chained cause would print a second
        # stack trace under the step's and again under the run's failure
        raise dg.Failure(description=str(exc)) from None


# ---------------------------------------------------------------------------------------------
# Assets


def book_assets(instrument: Instrument) -> list[dg.AssetsDefinition]:
    """`{instrument}/raw_zip` and `{instrument}/preprocessed_book` (+ checks): one instrument's days."""
    raw, book = raw_key(instrument), book_key(instrument)
    tags = {"instrument": instrument.key}

    @dg.asset(
        key=raw,
        partitions_def=daily_partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=GROUP,
        kinds={"zip"},
        tags=tags,
        description=f"The day's Bybit {instrument} order-book archive under QUANTGOD_RAW_ROOT (found recursively, "
        "ob200 preferred over ob500; spot and inverse under {root}/{category}/), downloaded from the public "
        "archive when missing and download.enabled.",
    )
    def raw_zip(context: dg.AssetExecutionContext, quantgod: QuantGodSettings) -> Iterator[Any]:
        settings = quantgod.load().for_instrument(instrument)
        with run_log("etl", settings.paths.logs_dir, instrument.key, forward_to=context.log,
                     when=run_started(context)) as log:
            _preflight(settings, log)
            outcomes = run_stage(partition_days(context), partial(book_day.find_day, settings=settings),
                                 workers=1, log=log)
        yield from report_days(context, raw, outcomes)

    @dg.multi_asset(
        name=f"{instrument.key}__preprocessed_book",
        specs=[
            dg.AssetSpec(
                book,
                deps=[raw],
                group_name=GROUP,
                kinds={"parquet", "polars"},
                tags=tags,
                description=f"One day's {instrument} order book as 1440 one-minute rows (200 levels a side and "
                f"minute statistics): {{DATA_DIR}}/L2/{instrument.category}/{instrument.symbol}/pre_processed/"
                "{YYYY-MM-DD}.parquet, written atomically.",
            )
        ],
        check_specs=_book_check_specs(book),
        partitions_def=daily_partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        # optional outputs: a range run reports each day itself and may end failed after some days
        can_subset=True,
    )
    def preprocessed_book(context: dg.AssetExecutionContext, quantgod: QuantGodSettings) -> Iterator[Any]:
        settings = quantgod.load().for_instrument(instrument)
        days = partition_days(context)
        materialize = book in context.selected_asset_keys
        workers = settings.etl.worker_count(len(days)) if materialize else 1
        with run_log("etl", settings.paths.logs_dir, instrument.key, forward_to=context.log,
                     when=run_started(context)) as log:
            log.info(f"ETL {day_span(days)}: {len(days)} day(s), {instrument}, {workers_note(workers)}")
            if materialize:
                _preflight(settings, log)
            work = book_day.produce_day if materialize else book_day.check_day  # checks only: read the day
            outcomes = run_stage(days, partial(work, settings=settings), workers=workers, log=log)
        yield from report_days(context, book, outcomes, materialize=materialize)

    return [raw_zip, preprocessed_book]


def days_summary_asset(instruments: Sequence[Instrument]) -> dg.AssetsDefinition:
    """`preprocessed_book_days`: every instrument's days at a glance, one DuckDB query over all."""

    @dg.asset(
        key=DAYS_SUMMARY,
        deps=[book_key(i) for i in instruments],
        group_name=GROUP,
        kinds={"duckdb"},
        description="Every preprocessed day of every instrument at a glance, read through DuckDB's read-only "
        "view over the Parquet files: rows, valid share, crossed minutes, price range, by instrument.",
        check_specs=[
            dg.AssetCheckSpec(
                "days_complete",
                asset=DAYS_SUMMARY,
                description="For every instrument, every day between its first and its last has a file of 1440 rows.",
            )
        ],
    )
    def preprocessed_book_days(
        context: dg.AssetExecutionContext, quantgod: QuantGodSettings, duckdb: DuckDBResource
    ) -> dg.MaterializeResult:
        from ..daily.summary import book_days_summary

        settings = quantgod.load()
        with duckdb.get_connection() as conn:
            summary = book_days_summary(settings, instruments, conn)
        if summary is None:
            folders = ", ".join(str(settings.for_instrument(i).paths.preprocessed_dir) for i in instruments)
            raise dg.Failure(description=f"no preprocessed days under {folders}")
        return dg.MaterializeResult(
            metadata=metadata_values(summary.metadata),
            check_results=[
                dg.AssetCheckResult(
                    check_name="days_complete",
                    passed=summary.complete,
                    description=summary.verdict,
                    metadata=metadata_values(summary.check_metadata),
                )
            ],
        )

    return preprocessed_book_days


def etl_assets_for(instruments: Sequence[Instrument]) -> list[dg.AssetsDefinition]:
    return [*(a for i in instruments for a in book_assets(i)), days_summary_asset(instruments)]
