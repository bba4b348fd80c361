"""raw_zip -> preprocessed_book (daily), its checks, and a DuckDB summary over all days.

The thin Dagster layer over `day_pipeline` (find / download / convert / check one day) and
`orderbook.quality` (the checks as plain data).

Ranges: both daily assets use `BackfillPolicy.single_run()`, so
`dagster asset materialize --partition-range A...B` (and a UI backfill) is one run whose step sees
every partition key; the days are processed on a process pool (`etl.workers`, default all cores).
How each partition gets its own record in a single run:
- all days succeed: per-partition metadata via `context.add_asset_metadata(..., partition_key=)`,
  then one `MaterializeResult`; Dagster writes one materialization per partition with its own
  metadata. Check evaluations follow, one per partition (`AssetCheckEvaluation(partition=...)`).
- some days fail: the successful days are reported as `AssetMaterialization(partition=...)` events
  with their checks, then the step fails with a `Failure` naming every failed day and its reason.
A one-partition run yields a plain `MaterializeResult` with `check_results`, and Dagster applies
the blocking checks itself.
"""


import datetime as dt
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import dagster as dg
from dagster_duckdb import DuckDBResource

from ..logs import run_log
from .check_events import days_failure, partition_evaluation
from ..partitions import daily_partitions
from ..resources import BOOK_VIEW, QuantGodSettings, book_view_sql
from ..settings import RawRootMissingError, Settings
from .day_pipeline import (
    BLOCKING_CHECKS,
    DayOutcome,
    describe_failures,
    locate_archive,
    png_markdown,
    preflight,
    process_days,
    workers_note,
)

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
            blocking=name in BLOCKING_CHECKS,
            partitions_def=daily_partitions,
        )
        for name, description in CHECK_DESCRIPTIONS.items()
    ]
SPEC_BY_NAME = {spec.name: spec for spec in BOOK_CHECK_SPECS}


# ---------------------------------------------------------------------------------------------
# Metadata


def _plain_metadata(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, (list, dict, tuple)):
            out[key] = dg.MetadataValue.json(list(value) if isinstance(value, tuple) else value)
        else:
            out[key] = value
    return out


def day_metadata(outcome: DayOutcome) -> dict[str, Any]:
    s = outcome.summary
    counts = dict(s.counts)  # type: ignore[union-attr]
    metadata: dict[str, Any] = {
        "path": dg.MetadataValue.path(str(s.output.resolve())),  # type: ignore[union-attr]
        "archive": dg.MetadataValue.path(str(outcome.archive)),
        "dagster/row_count": s.rows,  # type: ignore[union-attr]
        "rows": s.rows,  # type: ignore[union-attr]
        "bytes": s.bytes_out,  # type: ignore[union-attr]
        "bytes_in": s.bytes_in,  # type: ignore[union-attr]
        "mb_per_s": round(s.mb_per_s, 1),  # type: ignore[union-attr]
        "seconds": round(s.seconds, 2),  # type: ignore[union-attr]
        "source_depth": s.source_depth,  # type: ignore[union-attr]
        "valid_share": round(s.valid_share, 6),  # type: ignore[union-attr]
        "messages": counts.get("n_messages", 0),
        "snapshots": counts.get("n_snapshots", 0),
        "sequence_gaps": counts.get("seq_gaps", 0),
        "crossed_messages": counts.get("crossed_messages", 0),
        "bad_lines": counts.get("bad_lines", 0),
        "counts": dg.MetadataValue.json(counts),
        "gap_intervals": dg.MetadataValue.json([f"{a}-{b}" for a, b in s.gap_intervals[:100]]),  # type: ignore[union-attr]
    }
    if outcome.download is not None:
        metadata["downloaded_from"] = dg.MetadataValue.url(outcome.download.url)
    if outcome.preview_md:
        metadata["preview"] = dg.MetadataValue.md(outcome.preview_md)
    if outcome.plot_png:
        metadata["micro_price"] = dg.MetadataValue.md(png_markdown(outcome.plot_png))
    return metadata


def check_result(check) -> dg.AssetCheckResult:
    metadata = _plain_metadata(check.metadata)
    if check.details_md:
        metadata["details"] = dg.MetadataValue.md(check.details_md)
    return dg.AssetCheckResult(
        asset_key=BOOK,
        check_name=check.name,
        passed=check.passed,
        severity=dg.AssetCheckSeverity.ERROR if check.severity == "ERROR" else dg.AssetCheckSeverity.WARN,
        description=check.description,
        metadata=metadata,
    )


def check_evaluation(context: dg.AssetExecutionContext, check, partition: str) -> dg.AssetCheckEvaluation:
    return partition_evaluation(context, check_result(check), partition,
                                blocking=SPEC_BY_NAME[check.name].blocking)


def _write_lines(log, outcome: DayOutcome) -> None:
    for level, line in outcome.lines:
        log.log(level, line)


def run_started(context: dg.AssetExecutionContext) -> dt.datetime | None:
    """The run's start in local time: every step of one run then writes one log file."""
    record = context.instance.get_run_record_by_id(context.run.run_id)
    return record.create_timestamp.astimezone().replace(tzinfo=None) if record else None


def _days(context: dg.AssetExecutionContext) -> list[dt.date]:
    return [dt.date.fromisoformat(key) for key in context.partition_keys]


def _preflight(settings: Settings, log) -> None:
    try:
        preflight(settings)
    except RawRootMissingError as exc:
        log.error(str(exc))
        raise dg.Failure(description=str(exc)) from exc


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
    days = _days(context)
    found: dict[dt.date, dict[str, Any]] = {}
    failed: dict[dt.date, str] = {}
    with run_log("etl", settings.paths.logs_dir, forward_to=context.log, when=run_started(context)) as log:
        _preflight(settings, log)
        for day in days:
            try:
                path, downloaded = locate_archive(day, settings)
            except (OSError, ValueError) as exc:
                failed[day] = str(exc)
                log.error(f"Failed: {day}: {exc}")
                continue
            depth = int(path.name.rsplit("_ob", 1)[1].split(".", 1)[0])
            metadata: dict[str, Any] = {
                "path": dg.MetadataValue.path(str(path)),
                "size": path.stat().st_size,
                "size_mb": round(path.stat().st_size / 1e6, 1),
                "depth": depth,
            }
            if downloaded is not None:
                metadata["downloaded_from"] = dg.MetadataValue.url(downloaded.url)
                log.info(f"Downloaded: {downloaded.url} -> {path} ({downloaded.bytes / 1e6:.1f} MB)")
            else:
                log.info(f"Found: {path} ({path.stat().st_size / 1e6:.1f} MB, ob{depth})")
            found[day] = metadata
    outcomes = [DayOutcome(day, ok=day in found, error=failed.get(day)) for day in days]
    if failed and len(days) == 1:
        raise dg.Failure(description=f"{days[0]}: {failed[days[0]]}")
    if failed:
        for day, metadata in found.items():
            yield dg.AssetMaterialization(asset_key=RAW, partition=day.isoformat(), metadata=metadata)
        raise days_failure(outcomes, describe_failures(outcomes))
    if len(days) == 1:
        yield dg.MaterializeResult(asset_key=RAW, metadata=found[days[0]])
        return
    for day, metadata in found.items():
        context.add_asset_metadata(metadata, asset_key=RAW, partition_key=day.isoformat())
    yield dg.MaterializeResult(asset_key=RAW)


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
    days = _days(context)
    materialize = BOOK in context.selected_asset_keys
    selected = {key.name for key in context.selected_asset_check_keys if key.asset_key == BOOK}
    started = time.perf_counter()
    with run_log("etl", settings.paths.logs_dir, forward_to=context.log, when=run_started(context)) as log:
        span = f"{days[0]}" if len(days) == 1 else f"{days[0]}...{days[-1]}"
        log.info(f"ETL {span}: {len(days)} day(s), {settings.symbol}, {workers_note(settings, len(days))}")
        if materialize:
            _preflight(settings, log)
            outcomes = process_days(days, settings, on_done=lambda o: _write_lines(log, o))
        else:
            from .day_pipeline import check_existing

            outcomes = [check_existing(day, settings) for day in days]
            for outcome in outcomes:
                _write_lines(log, outcome)
        failed = [o for o in outcomes if o.reason]
        ok = [o for o in outcomes if o.error is None]
        log.info(f"Done: {len(outcomes) - len(failed)} of {len(outcomes)} day(s) succeeded "
                 f"in {time.perf_counter() - started:.1f} s")
        if failed:
            log.error(describe_failures(outcomes))

    if len(days) == 1 and context.has_partition_key:
        outcome = outcomes[0]
        if outcome.error:
            raise dg.Failure(description=f"{outcome.day}: {outcome.error}")
        results = [check_result(c) for c in outcome.checks if c.name in selected]
        if materialize:
            yield dg.MaterializeResult(asset_key=BOOK, metadata=day_metadata(outcome), check_results=results)
        else:
            yield from results
        return  # a failed blocking check fails the step here (Dagster does it)

    if materialize:
        if all(o.error is None for o in outcomes):
            for o in outcomes:
                context.add_asset_metadata(day_metadata(o), asset_key=BOOK, partition_key=o.day.isoformat())
            yield dg.MaterializeResult(asset_key=BOOK)
        else:
            for o in ok:
                yield dg.AssetMaterialization(asset_key=BOOK, partition=o.day.isoformat(), metadata=day_metadata(o))
    for o in ok:
        for check in o.checks:
            if check.name in selected:
                # yielded, not log_event: logged events reach the instance only at the next yield,
                # so a Failure raised below would drop the good days' check results
                yield check_evaluation(context, check, o.day.isoformat())
    if failed:
        raise days_failure(outcomes, describe_failures(outcomes))


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
            "mean_valid_share": round(float(frame["valid_share"].mean()), 6),
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
