"""The predictions stage's day: the champion model's per-minute probabilities for one day.

`produce_day` runs in a pool worker for `predictions` (torch and polars, never dagster): it reads
the champion bundle (`{DATA_DIR}/models/champion.pth`, the registry champion's copy), the day's
book and the day before it (history: a window needs seq_len minutes, the first minute's return
the minute before), and writes `{DATA_DIR}/predictions/{model version}/{YYYY-MM-DD}.parquet` (the
version: the bundle's content hash). The `predictions_cover_valid_minutes` check warns when a
minute whose book is valid has no prediction (the day before missing, or a gap shorter than a
window).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np

from ..orderbook.quality import WARN, CheckOutcome
from ..settings import Settings
from ..storage import write_parquet_atomic
from .outcome import DayOutcome, FilePath, publish, short_reason, staging_path

__all__ = ["COVERAGE", "coverage_check", "produce_day"]

COVERAGE = "predictions_cover_valid_minutes"


@functools.cache
def _predictor(path: Path, mtime_ns: int) -> Any:
    """The loaded champion, once per worker process and bundle file version."""
    from ..ml.predict import Predictor

    return Predictor.load(path)


def _champion(settings: Settings) -> tuple[Any, dict[str, Any]]:
    """(the loaded champion, its champion.json pointer); FileNotFoundError when there is none."""
    path = settings.paths.champion_path
    if not path.is_file():
        raise FileNotFoundError(f"no champion model at {path}: materialize model until one is promoted")
    trained_on = settings.training_instruments
    if settings.instrument not in trained_on:
        # its statistics were never learnt: scored once in the model's test report (training.yaml
        # unseen_instruments), never as the champion's daily predictions
        raise ValueError(f"{settings.instrument.key}: the champion {path} was trained on "
                         f"{', '.join(i.key for i in trained_on)} only (training.yaml instruments); "
                         "its unseen-instrument score is in the model's test report")
    pointer_path = path.with_suffix(".json")
    pointer = json.loads(pointer_path.read_text(encoding="utf-8")) if pointer_path.is_file() else {}
    return _predictor(path, path.stat().st_mtime_ns), pointer


def coverage_check(has_window: np.ndarray, valid: np.ndarray, minutes: np.ndarray) -> CheckOutcome:
    """Every minute whose book is valid has a prediction; WARN naming how many do not and the first."""
    uncovered = np.flatnonzero(valid & ~has_window)
    first = ""
    if uncovered.size:
        first_minute = dt.datetime.fromtimestamp(int(minutes[uncovered[0]]) * 60, dt.UTC)
        first = f", the first at {first_minute:%H:%M} UTC"
    return CheckOutcome(
        name=COVERAGE,
        passed=not uncovered.size,
        severity=WARN,
        description=(f"all {int(valid.sum())} valid minutes have a prediction" if not uncovered.size else
                     f"{uncovered.size} of {int(valid.sum())} valid minutes have no prediction{first} "
                     "(the day before missing, or a gap shorter than a window)"),
        metadata={"valid_minutes": int(valid.sum()), "predicted_minutes": int(has_window.sum()),
                  "uncovered_minutes": int(uncovered.size)},
    )


def _frames(settings: Settings, day: dt.date) -> list[Any]:
    import polars as pl

    source = settings.paths.preprocessed_path(day)
    if not source.is_file():
        raise FileNotFoundError(f"{source} does not exist; materialize preprocessed_book for {day} first")
    before = settings.paths.preprocessed_path(day - dt.timedelta(days=1))
    return [pl.read_parquet(path).sort("ts") for path in (before, source) if path.is_file()]


def _predict_day(outcome: DayOutcome, settings: Settings) -> tuple[Any, Path, dict[str, str]]:
    """(the day's prediction rows, the file they go to, the file's metadata); fills checks and metadata."""
    from ..ml.predict import predict_with_valid

    predictor, pointer = _champion(settings)
    frames = _frames(settings, outcome.day)
    # a model trained on several instruments scales each with its own statistics: name this one
    instrument = settings.instrument.key if len(predictor.instruments) > 1 else None
    table, valid_all = predict_with_valid(predictor, frames, instrument=instrument)  # one feature pass
    rows = frames[-1].height
    day_rows = table.tail(rows)  # the day before was history only
    valid = valid_all[-rows:]
    has_window = day_rows.get_column("has_window").to_numpy()
    minutes = day_rows.get_column("ts").dt.epoch("ms").to_numpy() // 60_000
    outcome.checks = [coverage_check(has_window, valid, minutes)]
    final = settings.paths.predictions_path(predictor.version, outcome.day)
    labels = day_rows.get_column("predicted_label").drop_nulls().to_list()
    counts = {name: labels.count(name) for name in predictor.class_names}
    outcome.metadata = {
        "path": FilePath(final.resolve()), "dagster/row_count": day_rows.height, "rows": day_rows.height,
        "predicted_minutes": int(has_window.sum()), "model_version": predictor.version,
        "registered_version": str(pointer.get("registered_version")),
        "mlflow_run_id": str(pointer.get("mlflow_run_id")),
        "history_days": len(frames) - 1, **{f"{name.lower()}_predicted": n for name, n in counts.items()},
    }
    outcome.stats = {"counts": counts}
    shown = ", ".join(f"{name} {n}" for name, n in counts.items())
    outcome.log(INFO, f"{outcome.day}: {int(has_window.sum())} of {rows} minutes predicted ({shown}) by champion "
                      f"v{pointer.get('registered_version')} ({predictor.version})")
    [check] = outcome.checks
    if not check.passed:
        outcome.log(WARNING, f"Coverage {outcome.day}: {check.description}")
    file_meta = {"quantgod.model_version": predictor.version, "quantgod.model_path": str(predictor.path),
                 "quantgod.registered_version": str(pointer.get("registered_version")),
                 "quantgod.day": outcome.day.isoformat()}
    return day_rows, final, file_meta


def produce_day(day: dt.date, settings: Settings) -> DayOutcome:
    """Predicts one day with the champion; never raises for a bad day (no champion, no book)."""
    outcome = DayOutcome(day)
    try:
        day_rows, final, file_meta = _predict_day(outcome, settings)
    except (FileNotFoundError, ValueError) as exc:
        return outcome.fail(str(exc), f"{day}.parquet")
    except Exception as exc:
        return outcome.fail(short_reason(exc), f"{day}.parquet")
    staged = staging_path(final)
    try:
        write_parquet_atomic(day_rows, staged, file_meta)
        publish(outcome, staged, final)
    except OSError as exc:
        outcome.fail(f"publishing {final}: {short_reason(exc)}", f"{day}.parquet")
    finally:
        staged.unlink(missing_ok=True)
    return outcome
