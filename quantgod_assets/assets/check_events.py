"""Per-partition check evaluations, shared by the daily assets' range runs.

In a single run over many days, each day's check result is reported as its own
`AssetCheckEvaluation` (a `MaterializeResult` carries checks for one partition only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dagster as dg


def target_materialization(context: dg.AssetExecutionContext, asset_key: dg.AssetKey, partition: str):
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
    except Exception:  # the link is a nicety; the evaluation stands without it
        return None


def partition_evaluation(
    context: dg.AssetExecutionContext,
    result: dg.AssetCheckResult,
    partition: str,
    *,
    blocking: bool,
) -> dg.AssetCheckEvaluation:
    """`result` (asset key and check name set) as the evaluation of one partition."""
    return dg.AssetCheckEvaluation(
        asset_key=result.asset_key,
        check_name=result.check_name,
        passed=result.passed,
        metadata=result.metadata,
        target_materialization_data=target_materialization(context, result.asset_key, partition),
        severity=result.severity,
        description=result.description,
        blocking=blocking,
        partition=partition,
    )


def days_failure(outcomes: Sequence[Any], description: str) -> dg.Failure:
    """The failure of a range run: which days failed and why, which succeeded (written, recorded).

    `outcomes` carry `.day` and `.reason` (None when the day succeeded).
    """
    failed = [o for o in outcomes if o.reason]
    table = "| day | reason |\n|---|---|\n" + "\n".join(
        f"| {o.day} | {o.reason.replace('|', '/')} |" for o in failed
    )
    return dg.Failure(
        description=description,
        metadata={
            "failed_days": dg.MetadataValue.json([o.day.isoformat() for o in failed]),
            "succeeded_days": dg.MetadataValue.json([o.day.isoformat() for o in outcomes if not o.reason]),
            "reasons": dg.MetadataValue.md(table),
        },
    )
