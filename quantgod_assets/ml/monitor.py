"""The champion on the days after its training range: the files `live_performance` reads.

    report, picture, info = monitor(load_settings())

Reads `champion.pth` and `champion.json` (its version, its training range, the training deciles
and priors saved in the bundle), then for every day after the training range that has both the
champion's predictions (`predictions` asset) and realised labels (`labelled_frame`): the
predictions, the labels (the day before too: persistence looks an hour back), and the model's
inputs recomputed from the book. The judging itself is `live.live_report`; the picture
`plots.live_performance_png`.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..labelling import labelled_day_path
from ..plots import live_performance_png

if TYPE_CHECKING:
    import polars as pl

    from ..settings import Settings
    from .live import LiveReport

__all__ = ["MonitorInfo", "NoLiveDaysError", "monitor"]

ONE_DAY = dt.timedelta(days=1)


class NoLiveDaysError(FileNotFoundError):
    """No champion yet, or no day after its training range with predictions and labels."""


@dataclass
class MonitorInfo:
    model_version: str
    registered_version: str | None
    training_end: dt.date
    days: list[dt.date]


def _champion(settings: Settings) -> tuple[Any, dict[str, Any]]:
    from .predict import Predictor

    path = settings.paths.champion_path
    pointer_path = path.with_suffix(".json")
    if not path.is_file() or not pointer_path.is_file():
        raise NoLiveDaysError(f"no champion model at {path}: materialize model until one is promoted")
    predictor = Predictor.load(path)
    extra = predictor.bundle.get("extra") or {}
    if "feature_bins" not in extra or "train_priors" not in extra:
        raise NoLiveDaysError(f"{path} holds no training reference (saved before live monitoring): train it again")
    return predictor, json.loads(pointer_path.read_text(encoding="utf-8"))


def _live_days(settings: Settings, version: str, after: dt.date) -> list[dt.date]:
    folder = settings.paths.predictions_path(version, after).parent
    days = sorted(dt.date.fromisoformat(p.stem) for p in folder.glob("????-??-??.parquet")) if folder.is_dir() else []
    suffix = settings.labelling.suffix
    return [d for d in days if d > after and labelled_day_path(settings.paths.labelled_dir, suffix, d).is_file()]


def _labels(settings: Settings, day: dt.date) -> pl.DataFrame | None:
    import polars as pl

    path = labelled_day_path(settings.paths.labelled_dir, settings.labelling.suffix, day)
    return pl.read_parquet(path, columns=["ts", "target"]) if path.is_file() else None


def _features(settings: Settings, days: list[dt.date], n_levels: int) -> dict[dt.date, np.ndarray]:
    """The model's inputs for each day's minutes, each book read once: a day's first mid return
    comes from the day before (the one just read, or read for it when the days are not consecutive)."""
    import polars as pl

    from .features import frame_features

    def read(day: dt.date) -> Any:
        return pl.read_parquet(settings.paths.preprocessed_path(day)).sort("ts")

    out: dict[dt.date, np.ndarray] = {}
    last: tuple[dt.date, Any] | None = None  # the latest day read and its feature block
    for day in days:
        before = day - ONE_DAY
        if (last is None or last[0] != before) and settings.paths.preprocessed_path(before).is_file():
            last = (before, frame_features(read(before), n_levels))
        previous = (last[1].last_ts_ms, last[1].last_mid) if last is not None and last[0] == before else None
        block = frame_features(read(day), n_levels, previous=previous)
        out[day], last = block.values, (day, block)
    return out


def monitor(settings: Settings) -> tuple[LiveReport, bytes, MonitorInfo]:
    """The live report, its picture and what it covered. Raises `NoLiveDaysError` when there is nothing to judge."""
    import polars as pl

    from .live import live_report

    predictor, pointer = _champion(settings)
    training_end = dt.date.fromisoformat(str(pointer["data_range"]).split("..")[-1])
    days = _live_days(settings, predictor.version, training_end)
    if not days:
        raise NoLiveDaysError(f"no day after the champion's training range (to {training_end}) has both its "
                              "predictions and labels: materialize predictions and labelled_frame for later days")
    labels = {d: frame for d in [days[0] - ONE_DAY, *days] if (frame := _labels(settings, d)) is not None}
    predictions = {d: pl.read_parquet(settings.paths.predictions_path(predictor.version, d),
                                      columns=["ts", "predicted"]) for d in days}
    features = _features(settings, days, predictor.n_levels)
    extra = predictor.bundle["extra"]
    live = settings.training.live
    lookahead = int(predictor.bundle["label_settings"].get("lookahead", settings.labelling.lookahead))
    # a model trained on several instruments compares each with its own training deciles
    bins = (extra.get("feature_bins_by_instrument") or {}).get(settings.instrument.key, extra["feature_bins"])
    report = live_report(days, labels, predictions, features, predictor.feature_names,
                         np.asarray(bins), extra["train_priors"], lookahead,
                         window_days=live.window_days, psi_threshold=live.psi_threshold)
    picture = live_performance_png(days, report.rolling, [d.psi_mean for d in report.days], live.psi_threshold,
                                   f"Champion v{pointer.get('registered_version')} after its training range "
                                   f"(to {training_end}): rolling {live.window_days}-day macro-F1 and input drift")
    info = MonitorInfo(predictor.version, pointer.get("registered_version"), training_end, days)
    return report, picture, info
