"""preprocessed_book -> labelled_frame (daily), its class_balance check, and label_distribution.

The thin Dagster layer over `labelling` (label one day from its file and the next day's, count the
classes). Same shape as `book.py`:

- `labelled_frame` depends on `preprocessed_book` of D and D+1 (a time-window partition mapping,
  end_offset=1). D+1 is optional: without its file the day's last `lookahead` minutes have a null
  target, and materializing D again once D+1 exists fills them. Output:
  `{DATA_DIR}/L2/labelled/{suffix}/{YYYY-MM-DD}.parquet`, the suffix from the labelling settings
  (`SELL_0004_BUY_0008_1h`), so runs with other settings never overwrite each other.
- Ranges are one run (`BackfillPolicy.single_run()`); the days are labelled on a process pool
  (`etl.workers`, default all cores). Every day gets its own materialization and check
  evaluation; a failed day (missing book, unreadable file, no class at all) is named in the
  step's failure while the others are written and recorded.
- Logs: `logs/labelling/labelling_{suffix}_{YYYYMMDD_HHMMSS}.log` for the run and
  `logs/labelling/labelling_processing.log` (cumulative), the same lines in the Dagster run log.
- `label_distribution` (not partitioned): the class distribution over every labelled day of the
  current suffix, by a DuckDB query over the Parquet files, with a table per month, a chart and
  one by day (by week past 62 days, by month past two years).
"""


import datetime as dt
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_duckdb import DuckDBResource

from ..day_pool import run_days
from ..labelling import (
    CLASS_NAMES,
    class_balance_problems,
    class_distribution,
    combine_distributions,
    config_line,
    distribution_line,
    label_day_files,
    labelled_day_path,
)
from ..logs import run_log
from ..partitions import daily_partitions
from ..plots import distribution_png, label_periods, label_periods_png
from ..resources import QuantGodSettings
from ..settings import LabellingSettings, Settings
from .check_events import days_failure, partition_evaluation
from .day_pipeline import ERROR, INFO, WARNING, png_markdown, short_reason, workers_note

BOOK = dg.AssetKey("preprocessed_book")
LABELS = dg.AssetKey("labelled_frame")
DISTRIBUTION = dg.AssetKey("label_distribution")
GROUP = "labelling"
CLASS_BALANCE = "class_balance"

warnings.filterwarnings("ignore", message=r".*`backfill_policy`.*", category=dg.BetaWarning)

with warnings.catch_warnings():
    # beta in Dagster 1.13: the newest partition's D+1 is not a partition yet, and that must not stop
    # a run or a backfill (the tail stays null until D is materialized again)
    warnings.simplefilter("ignore", dg.BetaWarning)
    NEXT_DAY_MAPPING = dg.TimeWindowPartitionMapping(
        start_offset=0, end_offset=1, allow_nonexistent_upstream_partitions=True
    )

with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.PreviewWarning)
    CLASS_BALANCE_SPEC = dg.AssetCheckSpec(
        CLASS_BALANCE,
        asset=LABELS,
        description="Every class (SELL, NEUTRAL, BUY) present among the day's labelled rows, else ERROR "
        "(blocking); WARN when a class holds less than labelling.min_class_share (2 %) of them.",
        blocking=True,
        partitions_def=daily_partitions,
    )


# ---------------------------------------------------------------------------------------------
# One day, as plain data


@dataclass
class LabelOutcome:
    day: dt.date
    path: Path | None = None
    error: str | None = None
    rows: int = 0
    distribution: dict[str, Any] = field(default_factory=dict)
    next_day_present: bool = False
    missing: list[str] = field(default_factory=list)
    rare: list[str] = field(default_factory=list)
    lines: list[tuple[int, str]] = field(default_factory=list)

    @property
    def reason(self) -> str | None:
        """Why the day counts as failed: an error, or the blocking class_balance check."""
        if self.error:
            return self.error
        if self.missing:
            return f"check {CLASS_BALANCE} failed: {balance_description(self)}"
        return None


def balance_description(outcome: LabelOutcome, min_share: float | None = None) -> str:
    dist = outcome.distribution
    if outcome.missing:
        if not dist.get("labelled"):
            return f"no labelled rows ({outcome.rows} rows, all with a null target)"
        return f"class(es) {', '.join(outcome.missing)} absent from {dist['labelled']} labelled rows"
    if outcome.rare:
        shares = ", ".join(f"{name} {100 * dist['shares'][name]:.2f}%" for name in outcome.rare)
        limit = "" if min_share is None else f" (under {100 * min_share:g}%)"
        return f"rare class(es){limit}: {shares}"
    return "all classes present: " + ", ".join(
        f"{name} {100 * dist['shares'][name]:.1f}%" for name in CLASS_NAMES
    )


def read_outcome(day: dt.date, path: Path, min_share: float) -> LabelOutcome:
    """Counts and flags of a written labelled day (only `target` and the file's metadata are read)."""
    import polars as pl
    import pyarrow.parquet as pq

    outcome = LabelOutcome(day, path=path)
    targets = pl.read_parquet(path, columns=["target"])["target"]
    outcome.rows = targets.len()
    outcome.distribution = class_distribution(targets)
    meta = pq.read_schema(path).metadata or {}
    outcome.next_day_present = meta.get(b"quantgod.label.next_day") == b"present"
    outcome.missing, outcome.rare = class_balance_problems(outcome.distribution, min_share)
    return outcome


def _outcome_lines(outcome: LabelOutcome, lookahead: int, min_share: float) -> None:
    if outcome.error:
        outcome.lines.append((ERROR, f"Failed: {outcome.day}.parquet: {outcome.error}"))
        return
    outcome.lines.append((INFO, distribution_line(f"{outcome.day}.parquet", outcome.distribution)))
    if not outcome.next_day_present:
        following = outcome.day + dt.timedelta(days=1)
        outcome.lines.append((INFO, f"{outcome.day}.parquet: no preprocessed {following} yet, the last "
                                    f"{lookahead} minutes stay unlabelled (materialize {outcome.day} "
                                    "again once it exists)"))
    if outcome.missing:
        outcome.lines.append((ERROR, f"Failed: {outcome.day}.parquet: {outcome.reason}"))
    elif outcome.rare:
        outcome.lines.append((WARNING, f"Class balance {outcome.day}.parquet: "
                                       f"{balance_description(outcome, min_share)}"))


def _finish(day: dt.date, settings: Settings, path: Path | None, error: str | None) -> LabelOutcome:
    lab = settings.labelling
    if error is None:
        try:
            outcome = read_outcome(day, path, lab.min_class_share)  # type: ignore[arg-type]
        except Exception as exc:
            outcome = LabelOutcome(day, path=path, error=f"reading {path}: {short_reason(exc)}")
    else:
        outcome = LabelOutcome(day, error=error)
    _outcome_lines(outcome, lab.lookahead, lab.min_class_share)
    return outcome


def _error_text(day: dt.date, exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"{exc}; materialize preprocessed_book first"
    if isinstance(exc, ValueError):
        return str(exc)
    return short_reason(exc)


def label_range(
    days: Sequence[dt.date],
    settings: Settings,
    *,
    on_done: Callable[[LabelOutcome], None] | None = None,
) -> list[LabelOutcome]:
    """Labels `days` (one in-process, several on a process pool); outcomes in `days` order.

    A bad day never stops the others: its outcome carries the reason.
    """
    outcomes: dict[dt.date, LabelOutcome] = {}

    def done(day: dt.date, path: Path | None, exc: BaseException | None) -> None:
        outcome = _finish(day, settings, path, None if exc is None else _error_text(day, exc))
        outcomes[day] = outcome
        if on_done is not None:
            on_done(outcome)

    # the workers import only `labelling` (polars), never dagster
    lab = settings.labelling
    label_one = partial(label_day_files, settings.paths.preprocessed_dir, settings.paths.labelled_dir,
                        lookahead=lab.lookahead, threshold_short=lab.threshold_short,
                        threshold_long=lab.threshold_long, price_column=lab.price_column)
    run_days(label_one, days, settings.etl.worker_count(len(days)), done)
    return [outcomes[d] for d in days]


def existing_outcome(day: dt.date, settings: Settings) -> LabelOutcome:
    """The check on an already labelled day (a checks-only run)."""
    lab = settings.labelling
    path = labelled_day_path(settings.paths.labelled_dir, lab.suffix, day)
    if not path.is_file():
        return _finish(day, settings, None, f"{path} does not exist; materialize labelled_frame first")
    return _finish(day, settings, path, None)


def describe_failures(outcomes: Sequence[LabelOutcome]) -> str:
    failed = [o for o in outcomes if o.reason]
    return "\n".join([f"{len(failed)} of {len(outcomes)} day(s) failed:", *[f"- {o.day}: {o.reason}" for o in failed]])


# ---------------------------------------------------------------------------------------------
# Metadata and check results


def _class_metadata(dist: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in CLASS_NAMES:
        out[f"{name.lower()}_count"] = dist["counts"][name]
        out[f"{name.lower()}_share"] = round(dist["shares"][name], 6)
    out["counts"] = dg.MetadataValue.json(dict(dist["counts"]))
    out["shares"] = dg.MetadataValue.json({k: round(v, 6) for k, v in dist["shares"].items()})
    return out


def day_metadata(outcome: LabelOutcome, lab: LabellingSettings) -> dict[str, Any]:
    dist = outcome.distribution
    return {
        "path": dg.MetadataValue.path(str(outcome.path.resolve())),  # type: ignore[union-attr]
        "dagster/row_count": outcome.rows,
        "rows": outcome.rows,
        "labelled_rows": dist["labelled"],
        "unlabelled_rows": dist["unlabelled"],
        **_class_metadata(dist),
        "distribution": distribution_line(f"{outcome.day}.parquet", dist),
        "next_day_present": outcome.next_day_present,
        "suffix": lab.suffix,
        "lookahead": lab.lookahead,
        "threshold_short": lab.threshold_short,
        "threshold_long": lab.threshold_long,
        "price_column": lab.price_column,
    }


def check_result(outcome: LabelOutcome, min_share: float) -> dg.AssetCheckResult:
    dist = outcome.distribution
    passed = not outcome.missing and not outcome.rare
    return dg.AssetCheckResult(
        asset_key=LABELS,
        check_name=CLASS_BALANCE,
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR if outcome.missing else dg.AssetCheckSeverity.WARN,
        description=balance_description(outcome, min_share),
        metadata={
            **_class_metadata(dist),
            "labelled_rows": dist["labelled"],
            "unlabelled_rows": dist["unlabelled"],
            "missing_classes": dg.MetadataValue.json(outcome.missing),
            "rare_classes": dg.MetadataValue.json(outcome.rare),
            "min_class_share": min_share,
        },
    )


def check_evaluation(context: dg.AssetExecutionContext, outcome: LabelOutcome, min_share: float) -> dg.AssetCheckEvaluation:
    return partition_evaluation(context, check_result(outcome, min_share), outcome.day.isoformat(), blocking=True)


# ---------------------------------------------------------------------------------------------
# Assets


@dg.multi_asset(
    name="labelled_frame",
    specs=[
        dg.AssetSpec(
            LABELS,
            deps=[dg.AssetDep(BOOK, partition_mapping=NEXT_DAY_MAPPING)],
            group_name=GROUP,
            kinds={"parquet", "polars"},
            description="The day's book rows with `fwd_return` over `lookahead` minutes and `target` "
            "(0 SELL, 1 NEUTRAL, 2 BUY; null where unknown): "
            "{DATA_DIR}/L2/labelled/{suffix}/{YYYY-MM-DD}.parquet. The last minutes are labelled "
            "from the next day's book; without it they stay null until D is materialized again.",
        )
    ],
    check_specs=[CLASS_BALANCE_SPEC],
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    can_subset=True,
)
def labelled_frame(context: dg.AssetExecutionContext, quantgod: QuantGodSettings) -> Iterator[Any]:
    settings = quantgod.load()
    lab = settings.labelling
    days = [dt.date.fromisoformat(key) for key in context.partition_keys]
    materialize = LABELS in context.selected_asset_keys
    check_selected = any(key.asset_key == LABELS for key in context.selected_asset_check_keys)
    try:
        suffix = lab.suffix
    except ValueError as exc:
        raise dg.Failure(description=f"labelling settings in {settings.config_dir}: {exc}") from exc
    started = time.perf_counter()
    with run_log("labelling", settings.paths.logs_dir, suffix, forward_to=context.log, cumulative=True) as log:
        span = f"{days[0]}" if len(days) == 1 else f"{days[0]}...{days[-1]}"
        log.info(config_line(lab.lookahead, lab.threshold_short, lab.threshold_long))
        log.info(f"Labelling {span}: {len(days)} day(s), {lab.price_column}, "
                 f"{(settings.paths.labelled_dir / suffix).as_posix()}, {workers_note(settings, len(days))}")

        def write(outcome: LabelOutcome) -> None:
            for level, line in outcome.lines:
                log.log(level, line)

        if materialize:
            outcomes = label_range(days, settings, on_done=write)
        else:
            outcomes = [existing_outcome(day, settings) for day in days]
            for outcome in outcomes:
                write(outcome)
        ok = [o for o in outcomes if o.error is None]
        failed = [o for o in outcomes if o.reason]
        if ok:
            log.info(distribution_line("FINAL DISTRIBUTION", combine_distributions(o.distribution for o in ok)))
        log.info(f"Done: {len(outcomes) - len(failed)} of {len(outcomes)} day(s) succeeded "
                 f"in {time.perf_counter() - started:.1f} s")
        if failed:
            log.error(describe_failures(outcomes))

    min_share = lab.min_class_share
    if len(days) == 1 and context.has_partition_key:
        outcome = outcomes[0]
        if outcome.error:
            raise dg.Failure(description=f"{outcome.day}: {outcome.error}")
        results = [check_result(outcome, min_share)] if check_selected else []
        if materialize:
            yield dg.MaterializeResult(asset_key=LABELS, metadata=day_metadata(outcome, lab), check_results=results)
        else:
            yield from results
        return  # a failed blocking check fails the step here (Dagster does it)

    if materialize:
        if all(o.error is None for o in outcomes):
            for o in outcomes:
                context.add_asset_metadata(day_metadata(o, lab), asset_key=LABELS, partition_key=o.day.isoformat())
            yield dg.MaterializeResult(asset_key=LABELS)
        else:
            for o in ok:
                yield dg.AssetMaterialization(asset_key=LABELS, partition=o.day.isoformat(),
                                              metadata=day_metadata(o, lab))
    if check_selected:
        # yielded, not context.log_event(...): logged events still pending when the step raises are dropped
        for o in ok:
            yield check_evaluation(context, o, min_share)
    if failed:
        raise days_failure(outcomes, describe_failures(outcomes))


# ---------------------------------------------------------------------------------------------
# The distribution over every labelled day


def distribution_sql(parquet_glob: str) -> str:
    escaped = parquet_glob.replace("'", "''")
    return (
        "SELECT regexp_extract(filename, '(\\d{4}-\\d{2}-\\d{2})\\.parquet$', 1) AS day, "
        "target, count(*) AS n "
        f"FROM read_parquet('{escaped}', filename = true, union_by_name = true) GROUP BY 1, 2"
    )


def month_table(rows: Sequence[tuple[str, Any, int]]) -> tuple[str, dict[str, dict[str, Any]]]:
    """A markdown table of the class distribution per month, from (day, target, count) rows."""
    months: dict[str, dict[str, Any]] = {}
    for day, target, count in rows:
        month = months.setdefault(day[:7], {"days": set(), "counts": [0, 0, 0], "unlabelled": 0})
        month["days"].add(day)
        if target is None:
            month["unlabelled"] += int(count)
        else:
            month["counts"][int(target)] += int(count)
    out: dict[str, dict[str, Any]] = {}
    lines = ["| month | days | labelled | SELL | NEUTRAL | BUY | unlabelled |", "|---|---|---|---|---|---|---|"]
    for key in sorted(months):
        month = months[key]
        labelled = sum(month["counts"])
        shares = [c / labelled if labelled else 0.0 for c in month["counts"]]
        cells = [f"{c} ({100 * s:.1f}%)" for c, s in zip(month["counts"], shares)]
        lines.append(f"| {key} | {len(month['days'])} | {labelled} | {' | '.join(cells)} | {month['unlabelled']} |")
        out[key] = {"days": len(month["days"]), "labelled": labelled,
                    "counts": dict(zip(CLASS_NAMES, month["counts"])),
                    "shares": {n: round(s, 6) for n, s in zip(CLASS_NAMES, shares)},
                    "unlabelled": month["unlabelled"]}
    return "\n".join(lines), out


@dg.asset(
    key=DISTRIBUTION,
    deps=[LABELS],
    group_name=GROUP,
    kinds={"duckdb"},
    description="The class distribution over every labelled day of the current labelling settings "
    "(one suffix folder), by a DuckDB query over the Parquet files: counts and shares per class, "
    "a table per month, a bar chart and stacked bars by day (week, month for longer spans).",
)
def label_distribution(
    context: dg.AssetExecutionContext, quantgod: QuantGodSettings, duckdb: DuckDBResource
) -> dg.MaterializeResult:
    settings = quantgod.load()
    suffix = settings.labelling.suffix
    folder = settings.paths.labelled_dir / suffix
    if not any(folder.glob("*.parquet")):
        raise dg.Failure(description=f"no labelled days under {folder}; materialize labelled_frame first")
    with duckdb.get_connection() as conn:
        rows = conn.execute(distribution_sql((folder / "*.parquet").as_posix())).fetchall()
    counts = [0, 0, 0]
    unlabelled = 0
    for _, target, count in rows:
        if target is None:
            unlabelled += int(count)
        else:
            counts[int(target)] += int(count)
    labelled = sum(counts)
    dist = {
        "counts": dict(zip(CLASS_NAMES, counts)),
        "shares": {name: (c / labelled if labelled else 0.0) for name, c in zip(CLASS_NAMES, counts)},
        "labelled": labelled,
        "unlabelled": unlabelled,
    }
    days = sorted({day for day, _, _ in rows})
    table, months = month_table(rows)
    line = distribution_line("FINAL DISTRIBUTION", dist)
    context.log.info(f"{suffix}: {len(days)} day(s) {days[0]}...{days[-1]}: {line}")
    metadata: dict[str, Any] = {
        "suffix": suffix,
        "folder": dg.MetadataValue.path(str(folder.resolve())),
        "days": len(days),
        "first_day": days[0],
        "last_day": days[-1],
        "labelled_rows": labelled,
        "unlabelled_rows": unlabelled,
        **_class_metadata(dist),
        "distribution": line,
        "by_month": dg.MetadataValue.md(table),
        "months": dg.MetadataValue.json(months),
    }
    try:
        png = distribution_png(dist, f"{settings.symbol} labels {suffix}, {len(days)} day(s)")
        metadata["chart"] = dg.MetadataValue.md(png_markdown(png, alt="label distribution"))
        period = "day" if len(days) <= 62 else "week" if len(days) <= 730 else "month"
        by_period = label_periods_png(label_periods(rows, period), f"{settings.symbol} labels {suffix} by {period}",
                                      period)
        metadata[f"chart_by_{period}"] = dg.MetadataValue.md(png_markdown(by_period.png, alt=f"labels by {period}"))
    except Exception as exc:  # a picture is never worth failing the summary
        context.log.warning(f"label distribution chart skipped: {type(exc).__name__}: {exc}")
    return dg.MaterializeResult(metadata=metadata)


label_assets = [labelled_frame, label_distribution]
