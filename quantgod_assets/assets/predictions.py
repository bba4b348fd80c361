"""preprocessed_book + model -> predictions (daily): the champion's per-minute probabilities.

The thin Dagster layer over `daily.predictions`: for each day, the registry champion's bundle
(`{DATA_DIR}/models/{training instruments}/champion.pth`, copied there when `model` promotes a run)
scores the day's book with the day before as history and writes
`{DATA_DIR}/predictions/{instrument}/{model version}/{YYYY-MM-DD}.parquet`; one `{instrument}/predictions`
per configured instrument (an instrument the model never trained on included: the unseen-instrument case).
Ranges are one run on a process pool, like the other daily assets; a day without a book, or a
platform without a champion yet, fails naming why while the other days are written. The
`predictions_cover_valid_minutes` check warns when a minute with a valid book has no prediction.
Log: `logs/predictions/predictions_{instrument}_{YYYYMMDD_HHMMSS}.log`.

`live_performance` (not partitioned) judges the champion on the days after its training range that
have predictions and labels (`ml.monitor`): rolling macro-F1 next to persistence and stratified,
input drift (population stability index against the training deciles), one picture; its check
`live_performance_holds` warns when the model falls below persistence or an input drifts.
"""

import warnings
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import dagster as dg

from ..daily import predictions as predict_day
from ..daily.outcome import Markdown
from ..daily.runner import day_span, run_stage, workers_note
from ..logs import run_log
from ..partitions import daily_partitions
from ..plots import png_markdown
from ..resources import QuantGodSettings
from ..settings import Instrument
from .book import book_key
from .labels import labels_key
from .reporting import metadata_values, partition_days, report_days, run_started

MODEL = dg.AssetKey("model")
LIVE_HOLDS = "live_performance_holds"
GROUP = "ml"

with warnings.catch_warnings():
    # the day before gives the day's first windows their history; the first partition has none
    warnings.simplefilter("ignore", dg.BetaWarning)
    DAY_BEFORE_MAPPING = dg.TimeWindowPartitionMapping(
        start_offset=-1, end_offset=0, allow_nonexistent_upstream_partitions=True
    )

def predictions_key(instrument: Instrument) -> dg.AssetKey:
    return dg.AssetKey([instrument.key, "predictions"])


def live_key(instrument: Instrument) -> dg.AssetKey:
    return dg.AssetKey([instrument.key, "live_performance"])


def _coverage_spec(predictions: dg.AssetKey) -> dg.AssetCheckSpec:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.AssetCheckSpec(
            predict_day.COVERAGE,
            asset=predictions,
            description="Every minute whose book is valid has a prediction (WARN otherwise: the day before "
            "missing, or a gap shorter than a window).",
            partitions_def=daily_partitions,
        )


def prediction_assets_for_instrument(instrument: Instrument) -> list[dg.AssetsDefinition]:
    """`{instrument}/predictions` (daily) and `{instrument}/live_performance`: the champion on this instrument."""
    predictions_asset, live = predictions_key(instrument), live_key(instrument)
    tags = {"instrument": instrument.key}

    @dg.multi_asset(
        name=f"{instrument.key}__predictions",
        specs=[
            dg.AssetSpec(
                predictions_asset,
                deps=[dg.AssetDep(book_key(instrument), partition_mapping=DAY_BEFORE_MAPPING), MODEL],
                group_name=GROUP,
                kinds={"parquet", "pytorch"},
                tags=tags,
                description=f"The champion model's per-minute class probabilities for the {instrument} day (p_sell, "
                "p_neutral, p_buy, predicted): {DATA_DIR}/predictions/{instrument}/{model version}/"
                "{YYYY-MM-DD}.parquet, "
                "the day before read as history.",
            )
        ],
        check_specs=[_coverage_spec(predictions_asset)],
        partitions_def=daily_partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        can_subset=True,
    )
    def predictions(context: dg.AssetExecutionContext, quantgod: QuantGodSettings) -> Iterator[Any]:
        settings = quantgod.load().for_instrument(instrument)
        days = partition_days(context)
        workers = settings.etl.worker_count(len(days))
        with run_log("predictions", settings.paths.logs_dir, instrument.key, forward_to=context.log,
                     when=run_started(context)) as log:
            log.info(f"Predicting {day_span(days)}: {len(days)} day(s) of {instrument} with "
                     f"{settings.paths.champion_path}, {workers_note(workers)}")
            outcomes = run_stage(days, partial(predict_day.produce_day, settings=settings), workers=workers, log=log)
        yield from report_days(context, predictions_asset, outcomes)

    @dg.asset(
        key=live,
        deps=[predictions_asset, labels_key(instrument)],
        group_name=GROUP,
        kinds={"polars"},
        tags=tags,
        check_specs=[dg.AssetCheckSpec(LIVE_HOLDS, asset=live, description="WARN when the champion's rolling "
                                       "macro-F1 falls below persistence's, or an input's PSI passes "
                                       "live.psi_threshold")],
        description=f"The champion on the {instrument} days after its training range: rolling macro-F1 next to "
        "persistence and stratified, input drift (PSI against the training deciles), one picture "
        "(training.yaml live:).",
    )
    def live_performance(context: dg.AssetExecutionContext, quantgod: QuantGodSettings) -> dg.MaterializeResult:
        return _live_result(context, quantgod.load().for_instrument(instrument))

    return [predictions, live_performance]


def _live_result(context: dg.AssetExecutionContext, settings: Any) -> dg.MaterializeResult:
    from ..ml.monitor import NoLiveDaysError, monitor

    try:
        report, picture, info = monitor(settings)
    except NoLiveDaysError as exc:
        raise dg.Failure(description=str(exc)) from None  # nothing to judge yet: one line, no stack
    problems = report.warnings()
    for line in problems:
        context.log.warning(line)
    last = report.days[-1]
    summary = report.summary()
    context.log.info(f"{settings.instrument}: {len(info.days)} live day(s) {info.days[0]}..{info.days[-1]} | "
                     f"rolling macro-F1: model {report.rolling['model'][-1]:.3f}, persistence "
                     f"{report.rolling['persistence'][-1]:.3f}, stratified {report.rolling['stratified'][-1]:.3f} | "
                     f"max PSI {max(report.psi.values()):.3f}")
    metadata: dict[str, Any] = {
        "picture": Markdown(png_markdown(picture, "live performance")),  # + `picture_inline`
        "instrument": settings.instrument.key,
        "model_version": info.model_version,
        "registered_version": str(info.registered_version),
        "training_end": str(info.training_end),
        "days": len(info.days), "first_day": str(info.days[0]), "last_day": str(info.days[-1]),
        "rolling_f1_model": round(report.rolling["model"][-1], 4),
        "rolling_f1_persistence": round(report.rolling["persistence"][-1], 4),
        "rolling_f1_stratified": round(report.rolling["stratified"][-1], 4),
        "psi_max": round(max(report.psi.values()), 4),
        "last_day_minutes": last.n,
        "summary": dg.MetadataValue.json(summary),
    }
    check = dg.AssetCheckResult(
        check_name=LIVE_HOLDS, passed=not problems, severity=dg.AssetCheckSeverity.WARN,
        description="; ".join(problems) or (f"model {report.rolling['model'][-1]:.3f} >= persistence "
                                             f"{report.rolling['persistence'][-1]:.3f}, no input drifted"),
        metadata={"model_below_persistence": report.model_below_persistence, "drifted": report.drifted},
    )
    return dg.MaterializeResult(metadata=metadata_values(metadata), check_results=[check])


def prediction_assets_for(instruments: Sequence[Instrument]) -> list[dg.AssetsDefinition]:
    return [a for i in instruments for a in prediction_assets_for_instrument(i)]
