"""preprocessed_book -> labelled_frame (daily), its class_balance check, and label_distribution.

The thin Dagster layer over `labelling` (label one day from its file and the next day's, count the
classes). Same shape as `book.py`:

- One `{instrument}/labelled_frame` per configured instrument (`BTCUSDT_linear/labelled_frame`);
  each depends on its own instrument's `preprocessed_book` of D and D+1 (a time-window partition mapping,
  end_offset=1). D+1 is optional: without its file the day's last `lookahead` minutes have a null
  target, and materializing D again once D+1 exists fills them. Output:
  `{DATA_DIR}/L2/{category}/{SYMBOL}/labelled/{suffix}/{YYYY-MM-DD}.parquet`, the suffix from the labelling settings
  (`SELL_0004_BUY_0008_1h`), so runs with other settings never overwrite each other.
- Ranges are one run (`BackfillPolicy.single_run()`); the days are labelled on a process pool
  (`etl.workers`, default all cores). Every day gets its own materialization and check
  evaluation; a failed day (missing book, unreadable file, no class at all) is named in the
  step's failure while the others are written and recorded.
- Logs: `logs/labelling/labelling_{suffix}_{instrument}_{YYYYMMDD_HHMMSS}.log` for the run and
  `logs/labelling/labelling_processing.log` (cumulative), the same lines in the Dagster run log.
- `label_distribution` (not partitioned): the class distribution over every labelled day of the
  current suffix, for each instrument and pooled, by a DuckDB query over the Parquet files, with
  a table per month, a chart and one by day (by week past 62 days, by month past two years).
"""


import warnings
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import dagster as dg
from dagster_duckdb import DuckDBResource

from ..daily import labels as label_day
from ..daily.book import LegacyLayoutError, require_migrated
from ..daily.outcome import Markdown
from ..daily.runner import day_span, run_stage, workers_note
from ..labelling import (
    combine_distributions,
    config_line,
    distribution_from_rows,
    distribution_line,
    labelled_day_counts,
    month_table,
)
from ..logs import run_log
from ..partitions import daily_partitions
from ..plots import distribution_png, label_periods, label_periods_png, png_markdown
from ..resources import QuantGodSettings
from ..settings import Instrument
from .book import book_key
from .reporting import metadata_values, partition_days, report_days, run_started

DISTRIBUTION = dg.AssetKey("label_distribution")
GROUP = "labelling"
CLASS_BALANCE = label_day.CLASS_BALANCE

warnings.filterwarnings("ignore", message=r".*`backfill_policy`.*", category=dg.BetaWarning)

with warnings.catch_warnings():
    # beta in Dagster 1.13: the newest partition's D+1 is not a partition yet, and that must not stop
    # a run or a backfill (the tail stays null until D is materialized again)
    warnings.simplefilter("ignore", dg.BetaWarning)
    NEXT_DAY_MAPPING = dg.TimeWindowPartitionMapping(
        start_offset=0, end_offset=1, allow_nonexistent_upstream_partitions=True
    )

def labels_key(instrument: Instrument) -> dg.AssetKey:
    return dg.AssetKey([instrument.key, "labelled_frame"])


def _class_balance_spec(labels: dg.AssetKey) -> dg.AssetCheckSpec:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.AssetCheckSpec(
            CLASS_BALANCE,
            asset=labels,
            description="Every class (SELL, NEUTRAL, BUY) present among the day's labelled rows, else ERROR "
            "(blocking); WARN when a class holds less than labelling.min_class_share (2 %) of them.",
            blocking=True,
            partitions_def=daily_partitions,
        )


# ---------------------------------------------------------------------------------------------
# Assets


def label_assets_for_instrument(instrument: Instrument) -> dg.AssetsDefinition:
    """`{instrument}/labelled_frame` (+ class_balance): one instrument's days labelled."""
    labels = labels_key(instrument)

    @dg.multi_asset(
        name=f"{instrument.key}__labelled_frame",
        specs=[
            dg.AssetSpec(
                labels,
                deps=[dg.AssetDep(book_key(instrument), partition_mapping=NEXT_DAY_MAPPING)],
                group_name=GROUP,
                kinds={"parquet", "polars"},
                tags={"instrument": instrument.key},
                description=f"The day's {instrument} book rows with `fwd_return` over `lookahead` minutes and "
                "`target` (0 SELL, 1 NEUTRAL, 2 BUY; null where unknown): "
                f"{{DATA_DIR}}/L2/{instrument.category}/{instrument.symbol}/labelled/{{suffix}}/"
                "{YYYY-MM-DD}.parquet. "
                "The last minutes are labelled from the next day's book; without it they stay null until D is "
                "materialized again.",
            )
        ],
        check_specs=[_class_balance_spec(labels)],
        partitions_def=daily_partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        can_subset=True,
    )
    def labelled_frame(context: dg.AssetExecutionContext, quantgod: QuantGodSettings) -> Iterator[Any]:
        settings = quantgod.load().for_instrument(instrument)
        lab = settings.labelling
        days = partition_days(context)
        materialize = labels in context.selected_asset_keys
        suffix = lab.suffix  # valid: the settings check the labelling's rules at load
        workers = settings.etl.worker_count(len(days)) if materialize else 1
        with run_log("labelling", settings.paths.logs_dir, f"{suffix}_{instrument.key}", forward_to=context.log,
                     cumulative=True, when=run_started(context)) as log:
            if materialize:
                try:
                    require_migrated(settings)
                except LegacyLayoutError as exc:
                    log.error(str(exc))
                    raise dg.Failure(description=str(exc)) from None
            log.info(config_line(lab.lookahead, lab.threshold_short, lab.threshold_long))
            log.info(f"Labelling {day_span(days)}: {len(days)} day(s) of {instrument}, {lab.price_column}, "
                     f"{(settings.paths.labelled_dir / suffix).as_posix()}, {workers_note(workers)}")
            work = label_day.produce_day if materialize else label_day.check_day  # checks only: read the day
            outcomes = run_stage(days, partial(work, settings=settings), workers=workers, log=log,
                                 summarize=_final_distribution)
        yield from report_days(context, labels, outcomes, materialize=materialize)

    return labelled_frame


def _final_distribution(outcomes: list) -> list[str]:
    dists = [o.stats["distribution"] for o in outcomes if o.published]  # what the folder now holds
    return [distribution_line("FINAL DISTRIBUTION", combine_distributions(dists))] if dists else []


# ---------------------------------------------------------------------------------------------
# The distribution over every labelled day


def distribution_asset(instruments: Sequence[Instrument]) -> dg.AssetsDefinition:
    """`label_distribution`: the classes over every labelled day, by instrument and pooled."""

    @dg.asset(
        key=DISTRIBUTION,
        deps=[labels_key(i) for i in instruments],
        group_name=GROUP,
        kinds={"duckdb"},
        description="The class distribution over every labelled day of the current labelling settings "
        "(one suffix folder per instrument), by a DuckDB query over the Parquet files: counts and shares per "
        "class for each instrument and pooled, a table per month, a bar chart and stacked bars by day "
        "(week, month for longer spans).",
    )
    def label_distribution(
        context: dg.AssetExecutionContext, quantgod: QuantGodSettings, duckdb: DuckDBResource
    ) -> dg.MaterializeResult:
        settings = quantgod.load()
        suffix = settings.labelling.suffix
        per_instrument: dict[str, list] = {}
        with duckdb.get_connection() as conn:
            for instrument in instruments:
                folder = settings.for_instrument(instrument).paths.labelled_dir / suffix
                rows = labelled_day_counts(folder, conn)
                if rows:
                    per_instrument[instrument.key] = rows
        if not per_instrument:
            raise dg.Failure(description=f"no labelled days of suffix {suffix} for "
                             f"{', '.join(i.key for i in instruments)}; materialize labelled_frame first")
        metadata: dict[str, Any] = {"suffix": suffix, "instruments": len(per_instrument)}
        pooled = []
        for key, rows in per_instrument.items():
            dist = distribution_from_rows((target, count) for _, target, count in rows)
            days = sorted({day for day, _, _ in rows})
            pooled.extend(rows)
            line = distribution_line("FINAL DISTRIBUTION", dist)
            context.log.info(f"{key} {suffix}: {len(days)} day(s) {days[0]}...{days[-1]}: {line}")
            metadata.update({f"{key}_days": len(days), f"{key}_first_day": days[0], f"{key}_last_day": days[-1],
                             f"{key}_distribution": line})
        metadata.update(_distribution_metadata(context, pooled, suffix, "all instruments" if len(per_instrument) > 1
                                               else next(iter(per_instrument))))
        return dg.MaterializeResult(metadata=metadata_values(metadata))

    return label_distribution


def _distribution_metadata(context: dg.AssetExecutionContext, rows: list, suffix: str, who: str) -> dict[str, Any]:
    """The pooled distribution: counts, shares, the month table and the pictures."""
    dist = distribution_from_rows((target, count) for _, target, count in rows)
    days = sorted({day for day, _, _ in rows})
    table, months = month_table(rows)
    metadata: dict[str, Any] = {
        "days": len(days),
        "first_day": days[0],
        "last_day": days[-1],
        "labelled_rows": dist["labelled"],
        "unlabelled_rows": dist["unlabelled"],
        **label_day.class_metadata(dist),
        "distribution": distribution_line("FINAL DISTRIBUTION", dist),
        "by_month": Markdown(table),
        "months": months,
    }
    try:
        png = distribution_png(dist, f"{who} labels {suffix}, {len(days)} day(s)")
        metadata["chart"] = Markdown(png_markdown(png, alt="label distribution"))
        period = "day" if len(days) <= 62 else "week" if len(days) <= 730 else "month"
        by_period = label_periods_png(label_periods(rows, period), f"{who} labels {suffix} by {period}", period)
        metadata[f"chart_by_{period}"] = Markdown(png_markdown(by_period.png, alt=f"labels by {period}"))
    except Exception as exc:  # a picture is never worth failing the summary
        context.log.warning(f"label distribution chart skipped: {type(exc).__name__}: {exc}")
    return metadata


def label_assets_for(instruments: Sequence[Instrument]) -> list[dg.AssetsDefinition]:
    return [*(label_assets_for_instrument(i) for i in instruments), distribution_asset(instruments)]
