"""The whole picture set of a run of days, as PNG files in `logs/debug_plots/`, from what the
pipeline left on disk (the preprocessed and labelled days, the model's `.plots.json`).

    paths = write_debug_plots(settings, dt.date(2025, 3, 10), dt.date(2025, 3, 12))

For each day of start..end that is preprocessed: `{day}_micro_price.png` and, when labelled with
the current labelling, `{day}_labels_by_hour.png`. Over those days (named `{first}` for one day,
`{first}_{last}` for more): `_labels_by_day.png` (more than one labelled day),
`_feature_histograms.png` (raw and scaled with the days' own mean / std) and
`_feature_correlation.png`. When a trained model exists at `settings.paths.model_path` with the
`{model}.plots.json` its training wrote beside it (`ml.final.write_plot_data`):
`model_training_curve.png`, `model_confusion_matrix.png` and `model_backtest_equity.png`.

The drawing is `plots.py`'s; this module only reads files and names the pictures. It imports
neither dagster nor torch.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import plots

if TYPE_CHECKING:
    from .settings import Settings

__all__ = ["DayNotPreprocessedError", "debug_plots", "model_plot_data_path", "write_debug_plots"]

Written = list[tuple[Path | str, str]]  # (a file written, or what was skipped; a note)


class DayNotPreprocessedError(FileNotFoundError):
    """No day of the range asked for has a preprocessed file."""


def model_plot_data_path(model_path: Path) -> Path:
    """`{model}.plots.json` beside the model file (as `ml.final.plot_data_path` names it)."""
    return model_path.with_name(f"{model_path.stem}.plots.json")


def write_debug_plots(settings: Settings, start: dt.date, end: dt.date, folder: Path | None = None,
                      n_levels: int | None = None) -> list[Path]:
    """Writes the picture set of the preprocessed days in start..end (and of the trained model,
    when there is one) to `folder` (default `{logs_dir}/debug_plots`); returns the files written.
    Raises `DayNotPreprocessedError` when no day of the range is preprocessed."""
    return [path for path, _ in debug_plots(settings, start, end, folder, n_levels) if isinstance(path, Path)]


def debug_plots(settings: Settings, start: dt.date, end: dt.date, folder: Path | None = None,
                n_levels: int | None = None) -> Written:
    """`write_debug_plots` with a note for each picture, and a line for each one skipped and why."""
    import polars as pl

    from .labelling import labelled_day_path

    if end < start:
        raise ValueError(f"the range ends before it starts: {start} .. {end}")
    levels = n_levels or settings.training.n_levels
    out = folder or settings.paths.logs_dir / "debug_plots"
    asked = [start + dt.timedelta(days=k) for k in range((end - start).days + 1)]
    days = [day for day in asked if settings.paths.preprocessed_path(day).is_file()]
    if not days:
        source = settings.paths.preprocessed_path(start)
        where = f"{source} does not exist" if start == end else \
            f"no file in {source.parent} for {start} .. {end}"
        raise DayNotPreprocessedError(
            f"{start if start == end else f'{start} .. {end}'} is not preprocessed: {where} "
            "(run `quantgod etl` on its archive or materialize preprocessed_book for it)"
        )
    out.mkdir(parents=True, exist_ok=True)
    written: Written = []

    # with several instruments configured, each one's pictures carry its key: one folder, no overwrite
    prefix = f"{settings.instrument.key}_" if len(settings.instruments) > 1 else ""

    def save(name: str, png: bytes, note: str = "") -> None:
        path = out / f"{prefix}{name}.png"
        path.write_bytes(png)
        written.append((path, note))

    suffix = settings.labelling.suffix
    label_rows: list[tuple[dt.date, Any, int]] = []
    blocks = []
    previous: tuple[int | None, float] | None = None
    from .ml.features import frame_features

    for day in days:
        frame = pl.read_parquet(settings.paths.preprocessed_path(day))
        png = plots.micro_price_png(frame, day, settings.symbol)
        if png is None:
            written.append((f"{day} micro_price skipped", "no finite micro_price in the day"))
        else:
            save(f"{day}_micro_price", png)
        labelled = labelled_day_path(settings.paths.labelled_dir, suffix, day)
        if labelled.is_file():
            labels = pl.read_parquet(labelled, columns=["ts", "target"])
            periods = plots.label_periods(plots.frame_label_rows(labels), "hour")
            picture = plots.label_periods_png(periods, f"{settings.symbol} labels {day} ({suffix}) by hour", "hour")
            save(f"{day}_labels_by_hour", picture.png, f"{sum(picture.data['labelled']):,} labelled minutes")
            counts = labels.group_by("target").len().rows()
            label_rows += [(day, target, n) for target, n in counts]
        else:
            written.append((f"{day} labels skipped", f"not labelled: {labelled} does not exist"))
        block = frame_features(frame, levels, previous=previous)
        previous = (block.last_ts_ms, block.last_mid)
        blocks.append(block)

    span = f"{days[0]}" if len(days) == 1 else f"{days[0]}_{days[-1]}"
    words = f"{days[0]}" if len(days) == 1 else f"{days[0]} .. {days[-1]}"
    labelled_days = {row[0] for row in label_rows}
    if len(labelled_days) > 1:
        periods = plots.label_periods(label_rows, "day")
        picture = plots.label_periods_png(periods, f"{settings.symbol} labels {words} ({suffix}) by day", "day")
        save(f"{span}_labels_by_day", picture.png, f"{len(labelled_days)} labelled days")

    values = np.concatenate([b.values for b in blocks]) if len(blocks) > 1 else blocks[0].values
    names = blocks[0].names
    try:
        hist = plots.feature_histograms_png(values, names,
                                            title=f"{words}: features, raw and scaled (these days' mean / std)")
        save(f"{span}_feature_histograms", hist.png, f"{len(hist.data['names'])} features")
        corr = plots.correlation_png(values, names, title=f"{words}: feature correlation")
        save(f"{span}_feature_correlation", corr.png,
             f"{len(corr.data['names'])} features, {corr.data['rows']:,} rows")
    except ValueError as exc:  # no finite row: say so, the other pictures stand
        written.append(("features skipped", str(exc)))

    written += _model_plots(settings.paths.model_path, save)
    return written


def _model_plots(model_path: Path, save: Callable[[str, bytes, str], None]) -> Written:
    """Saves the trained model's training curve, test confusion matrix and backtest equity, from
    the `.plots.json` beside it; returns a line saying why not when there is no model or no file."""
    if not model_path.is_file():
        return [("model pictures skipped", f"no trained model: {model_path} does not exist")]
    source = model_plot_data_path(model_path)
    if not source.is_file():
        return [("model pictures skipped",
                 f"{source} does not exist (the model was trained before it was written: train it again)")]
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
        history = [_Epoch(**epoch) for epoch in data["history"]]
        confusion = data["confusion"]
        equity, period = data["equity"], data["test_period"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [("model pictures skipped", f"{source}: unreadable ({type(exc).__name__}: {exc})")]
    save("model_training_curve", plots.training_curve_png(history, f"{model_path.name}: training curve"),
         f"{len(history)} epochs")
    save("model_confusion_matrix", plots.confusion_png(confusion, f"{model_path.name}: test confusion matrix"),
         f"{int(np.sum(confusion)):,} test windows")
    picture = plots.backtest_equity_png(equity, period[0], period[1], f"{model_path.name}: backtest on the test block")
    save("model_backtest_equity", picture.png,
         ", ".join(f"{name} {100 * value:+.2f} %" for name, value in picture.data["final"].items()))
    return []


class _Epoch:
    """One epoch of the saved history, with the fields `plots.training_curve_figure` reads."""

    def __init__(self, epoch: int, train_loss: float, val_loss: float, f1_macro: float,
                 f1_per_class: list[float], **_: Any) -> None:
        self.epoch, self.train_loss, self.val_loss = int(epoch), float(train_loss), float(val_loss)
        self.f1_macro, self.f1_per_class = float(f1_macro), [float(v) for v in f1_per_class]
