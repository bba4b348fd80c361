"""Reports a daily stage's outcomes to Dagster: the one place that knows how a range run is recorded.

Daily assets use `BackfillPolicy.single_run()`, so `--partition-range A...B` (and a UI backfill)
is one run whose step sees every partition key. `report_days` turns the stage's `DayOutcome`s into
events so that each partition still gets its own record. A day is recorded as materialized only
when it was published (its blocking checks passed and its file replaced the previous one):
- one partition: a `MaterializeResult` with its `check_results`; a day not published yields its
  check results and fails the step with its reason; an error fails it at once;
- every day published: per-partition metadata through `context.add_asset_metadata(...,
  partition_key=)` and one `MaterializeResult`; Dagster writes one materialization a partition;
- some days not: an `AssetMaterialization(partition=...)` for each published day;
then one `AssetCheckEvaluation(partition=...)` per checked day and selected check, and a `Failure`
naming every failed day (an error or a failed blocking check) with its reason, or, when no day
failed, each selected check's (empty) output, as Dagster expects one for every check of the step.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg

from ..daily.outcome import CheckOutcome, DayOutcome, FilePath, Markdown, Url, describe_failures

__all__ = [
    "check_outputs",
    "check_result",
    "day_failure",
    "days_failure",
    "metadata_values",
    "partition_days",
    "report_days",
    "run_started",
]


def partition_days(context: dg.AssetExecutionContext) -> list[dt.date]:
    return [dt.date.fromisoformat(key) for key in context.partition_keys]


def run_started(context: dg.AssetExecutionContext) -> dt.datetime | None:
    """The run's start in local time: every step of one run then writes one log file."""
    record = context.instance.get_run_record_by_id(context.run.run_id)
    return record.create_timestamp.astimezone().replace(tzinfo=None) if record else None


def selected_checks(context: dg.AssetExecutionContext, asset_key: dg.AssetKey) -> set[str]:
    return {key.name for key in context.selected_asset_check_keys if key.asset_key == asset_key}


def _metadata_value(value: Any) -> Any:
    if isinstance(value, dg.MetadataValue):  # already a Dagster value (some are tuples underneath)
        return value
    if isinstance(value, (FilePath, Path)):
        return dg.MetadataValue.path(str(value))
    if isinstance(value, Url):
        return dg.MetadataValue.url(str(value))
    if isinstance(value, Markdown):
        return dg.MetadataValue.md(str(value))
    if isinstance(value, (list, tuple, dict)):
        return dg.MetadataValue.json(list(value) if isinstance(value, tuple) else value)
    return value


def metadata_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Plain metadata (paths, URLs, Markdown, lists and mappings marked as such) as Dagster values.

    A picture (`Markdown.picture`) stays as it is (the data: URI, behind "[Show Markdown]") and
    is also shown inline as `{key}_inline`: the UI draws a Markdown value in the asset's event
    views only when it is under 1000 characters, so the PNG is copied into the instance's local
    compute-log folder and linked by the webserver's `/logs/<key>/png` route, which serves it.
    Without a local compute-log manager (or a DAGSTER_HOME instance) only the fallback remains."""
    out = {key: _metadata_value(value) for key, value in values.items()}
    pictures = {key: value.picture for key, value in values.items() if isinstance(value, Markdown)}
    for key, picture in pictures.items():
        if picture is None:
            continue
        try:
            import hashlib

            from dagster._core.storage.local_compute_log_manager import LocalComputeLogManager

            manager = dg.DagsterInstance.get().compute_log_manager
            if not isinstance(manager, LocalComputeLogManager):
                continue
            name = hashlib.sha256(picture[1]).hexdigest()[:24]
            target = Path(manager.get_captured_local_path(["quantgod_pictures", name], "png"))
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.is_file():
                target.write_bytes(picture[1])
            out[f"{key}_inline"] = dg.MetadataValue.md(f"![{picture[0]}](/logs/quantgod_pictures/{name}/png)")
        except Exception:  # an ephemeral instance, a read-only folder: the data: URI still shows it
            continue
    return out


def check_result(asset_key: dg.AssetKey, check: CheckOutcome) -> dg.AssetCheckResult:
    metadata = metadata_values(check.metadata)
    if check.details_md:
        metadata["details"] = dg.MetadataValue.md(check.details_md)
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name=check.name,
        passed=check.passed,
        severity=dg.AssetCheckSeverity.ERROR if check.severity == "ERROR" else dg.AssetCheckSeverity.WARN,
        description=check.description,
        metadata=metadata,
    )


def _target_materialization(context: dg.AssetExecutionContext, asset_key: dg.AssetKey, partition: str) -> Any:
    """The materialization a per-partition check evaluation refers to (None if not found)."""
    try:
        from dagster._core.definitions.asset_checks.asset_check_evaluation import (
            AssetCheckEvaluationTargetMaterializationData,
        )

        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition]), limit=1
        ).records
        if not records:
            return None
        record = records[0]
        return AssetCheckEvaluationTargetMaterializationData(
            storage_id=record.storage_id, run_id=record.run_id, timestamp=record.timestamp
        )
    except Exception:  # the link is a nicety (and a private API); the evaluation stands without it
        return None


def partition_evaluation(
    context: dg.AssetExecutionContext, asset_key: dg.AssetKey, check: CheckOutcome, outcome: DayOutcome,
    *, of_published: bool,
) -> dg.AssetCheckEvaluation:
    """One day's check as its own evaluation (a `MaterializeResult` carries one partition's only).

    `of_published`: the check ran on the day's published file, so it refers to the day's latest
    materialization; a rejected output refers to none (the good file before it did not fail).
    """
    result = check_result(asset_key, check)
    partition = outcome.day.isoformat()
    target = _target_materialization(context, asset_key, partition) if of_published else None
    return dg.AssetCheckEvaluation(
        asset_key=asset_key,
        check_name=check.name,
        passed=result.passed,
        metadata=result.metadata,
        target_materialization_data=target,
        severity=result.severity,
        description=result.description,
        blocking=check.name in outcome.blocking,
        partition=partition,
    )


def days_failure(outcomes: Sequence[DayOutcome]) -> dg.Failure:
    """The failure of a range run: which days failed and why, which succeeded (written, recorded)."""
    failed = [o for o in outcomes if o.reason]
    table = "| day | reason |\n|---|---|\n" + "\n".join(
        f"| {o.day} | {(o.reason or '').replace('|', '/')} |" for o in failed
    )
    return dg.Failure(
        description=describe_failures(outcomes),
        metadata={
            "failed_days": dg.MetadataValue.json([o.day.isoformat() for o in failed]),
            "succeeded_days": dg.MetadataValue.json([o.day.isoformat() for o in outcomes if not o.reason]),
            "reasons": dg.MetadataValue.md(table),
            "rejected_outputs": dg.MetadataValue.json(
                {o.day.isoformat(): str(o.rejected) for o in outcomes if o.rejected}),
        },
    )


def day_failure(day: dt.date, reason: str) -> dg.Failure:
    """One day's expected failure as one line, `{day}: {reason}`, the day said once.

    Raised bare (no `from`): Dagster prints a failure's stack under the step's failure and again
    under the run's, and a chained cause would add a second stack to each.
    """
    line = " ".join(part.strip() for part in reason.splitlines() if part.strip())
    return dg.Failure(description=line if line.startswith(f"{day}: ") else f"{day}: {line}")


def report_days(
    context: dg.AssetExecutionContext,
    asset_key: dg.AssetKey,
    outcomes: Sequence[DayOutcome],
    *,
    materialize: bool = True,
) -> Iterator[Any]:
    """The events of one step over `outcomes` (see the module docstring); raises the run's `Failure`."""
    checks = selected_checks(context, asset_key)
    if len(outcomes) == 1 and context.has_partition_key:
        [outcome] = outcomes
        if outcome.error:
            raise day_failure(outcome.day, outcome.error)
        if materialize and outcome.published:
            results = [check_result(asset_key, c) for c in outcome.checks if c.name in checks]
            yield dg.MaterializeResult(asset_key=asset_key, metadata=metadata_values(outcome.metadata),
                                       check_results=results)
            return
        if not materialize:  # checks only: a failed blocking check fails the step here (Dagster does it)
            yield from (check_result(asset_key, c) for c in outcome.checks if c.name in checks)
            return
        # not published: the previous file stays, nothing is recorded, its checks refer to no materialization
        yield from (partition_evaluation(context, asset_key, c, outcome, of_published=False)
                    for c in outcome.checks if c.name in checks)
        raise day_failure(outcome.day, outcome.reason or "not published")

    published = [o for o in outcomes if o.published] if materialize else []
    if materialize and len(published) == len(outcomes):
        for o in published:
            context.add_asset_metadata(metadata_values(o.metadata), asset_key=asset_key,
                                       partition_key=o.day.isoformat())
        yield dg.MaterializeResult(asset_key=asset_key)
    for o in published if len(published) < len(outcomes) else []:
        yield dg.AssetMaterialization(asset_key=asset_key, partition=o.day.isoformat(),
                                      metadata=metadata_values(o.metadata))
    for o in outcomes:
        for check in o.checks if o.produced else []:
            if check.name in checks:
                # yielded, not log_event: logged events reach the instance only at the next yield,
                # so the Failure raised below would drop the good days' check results
                yield partition_evaluation(context, asset_key, check, o, of_published=o.published or not materialize)
    if any(o.reason for o in outcomes):
        raise days_failure(outcomes)
    yield from check_outputs(context, asset_key, checks)


def check_outputs(context: dg.AssetExecutionContext, asset_key: dg.AssetKey, checks: set[str]) -> Iterator[dg.Output]:
    """The step's output of each selected check, reported through per-day `AssetCheckEvaluation`s.

    Dagster counts a check as reported only when an `AssetCheckResult` (or a `MaterializeResult`
    carrying one) names it; evaluations yielded directly do not count, so a range step that passed
    every check would end with `did not yield or return expected outputs {...checks...}`. An
    `AssetCheckResult` is itself turned into exactly this output (no value) plus its evaluation:
    here the evaluations are the per-day ones already yielded.
    """
    for name in sorted(checks):
        key = dg.AssetCheckKey(asset_key, name)
        yield dg.Output(None, output_name=context.assets_def.get_output_name_for_asset_check_key(key))
