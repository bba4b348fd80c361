"""What the ML stages train on: the labelled days of a range → features, targets, windows, split, scaler.

The labelled days come from `{DATA_DIR}/L2/labelled/{suffix}/`, the range from training.yaml
`data.start` / `data.end` (null: the first / last labelled day present); a gap in the range fails
with `MissingDaysError` naming the missing days.

    settings = load_settings()
    data = prepare_data(settings, n_levels=10, seq_len=30)   # features, targets, split, scaler
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .dataset import (
    LabelledRange,
    MissingDaysError,
    Scaler,
    TrainingArrays,
    WindowIndex,
    build_training_arrays,
    load_labelled_range,
    rows_covered,
)
from .splits import Split, train_val_test_split

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["MissingDaysError", "NoLabelledDaysError", "PreparedData", "labelled_range", "prepare_data"]


class NoLabelledDaysError(FileNotFoundError):
    """The labelled folder of the current label suffix holds no day at all."""


def _label_dir(settings: Settings) -> Path:
    return settings.paths.labelled_suffix_dir(settings.labelling.suffix)


def labelled_range(settings: Settings, start: dt.date | str | None = None, end: dt.date | str | None = None,
                   require_complete: bool = True) -> LabelledRange:
    """The labelled days of [start, end] (default: training.yaml `data`, null = the first / last
    labelled day present). Raises `MissingDaysError` naming the days without a file."""
    label_dir = _label_dir(settings)
    start = start or settings.training.data.start
    end = end or settings.training.data.end
    if start is None or end is None:
        present = sorted(p.stem for p in label_dir.glob("????-??-??.parquet")) if label_dir.is_dir() else []
        if not present:
            raise NoLabelledDaysError(
                f"no labelled days in {label_dir} (label suffix {settings.labelling.suffix}): "
                "materialize labelled_frame first"
            )
        start = start or present[0]
        end = end or present[-1]
    found = load_labelled_range(label_dir, start, end)
    if require_complete:
        found.raise_if_missing()
    return found


@dataclass
class PreparedData:
    """Everything a model needs from the labelled range, for one (n_levels, seq_len)."""

    arrays: TrainingArrays
    windows: WindowIndex
    split: Split
    scaler: Scaler  # fitted on the rows inside training windows only
    seq_len: int
    n_levels: int
    lookahead: int
    labelled: LabelledRange
    prices: np.ndarray | None = None  # the label price column per row (for the backtest)

    @property
    def features(self) -> np.ndarray:
        return self.arrays.features

    @property
    def targets(self) -> np.ndarray:
        return self.arrays.targets

    @property
    def minutes(self) -> np.ndarray:
        return self.arrays.minutes

    @property
    def n_features(self) -> int:
        return int(self.arrays.features.shape[1])

    def dataset(self, part: str) -> Any:
        """A `SequenceDataset` over the shared matrix for "train", "val" or "test" (scaled per batch)."""
        from .dataset import SequenceDataset

        return SequenceDataset(self.features, self.targets, self.split.parts()[part], self.seq_len, self.scaler)

    def sizes(self) -> dict[str, int]:
        return {part: int(ends.size) for part, ends in self.split.parts().items()}

    def describe(self) -> str:
        s = self.sizes()
        days = self.labelled.days
        return (f"Data: {len(days)} labelled day(s) {days[0]}..{days[-1]} | {self.arrays.n_rows:,} rows | "
                f"{self.n_features} features ({self.n_levels} levels) | seq_len {self.seq_len} | "
                f"windows train {s['train']:,} / val {s['val']:,} / test {s['test']:,} "
                f"(purge {self.split.purge} min)")


def _read_prices(labelled: LabelledRange, column: str, n_rows: int) -> np.ndarray:
    parts = [frame.get_column(column).cast(float).to_numpy() for _day, frame in labelled.iter_days([column])]
    prices = np.concatenate(parts) if parts else np.zeros(0)
    if prices.size != n_rows:
        raise ValueError(f"read {prices.size} prices for {n_rows} rows")
    return prices


def prepare_data(
    settings: Settings,
    start: dt.date | str | None = None,
    end: dt.date | str | None = None,
    n_levels: int | None = None,
    seq_len: int | None = None,
    *,
    arrays: TrainingArrays | None = None,
    labelled: LabelledRange | None = None,
    with_prices: bool = False,
) -> PreparedData:
    """Labelled days → float32 feature matrix → usable windows → purged train / val / test split →
    a scaler fitted on the training rows. `arrays` reuses a matrix already built for `n_levels`."""
    n_levels = int(n_levels or settings.training.n_levels)
    seq_len = int(seq_len or settings.training.seq_len)
    lookahead = int(settings.labelling.lookahead)
    if labelled is None:
        labelled = labelled_range(settings, start, end)
    if arrays is None:
        arrays = build_training_arrays(labelled, n_levels)
    elif arrays.n_levels != n_levels:
        raise ValueError(f"arrays hold {arrays.n_levels} levels, {n_levels} asked for")
    windows = WindowIndex.build(arrays.valid, arrays.targets, seq_len, arrays.minutes)
    split = train_val_test_split(windows.ends, lookahead, seq_len, settings.training.split.fractions, arrays.minutes)
    if not split.train.size or not split.val.size:
        raise ValueError(
            f"too few usable windows for a split: {len(windows)} windows of {seq_len} minutes over "
            f"{len(labelled.days)} day(s) give train {split.train.size} / val {split.val.size} / test "
            f"{split.test.size} (purge {split.purge} min): label more days or shorten seq_len"
        )
    scaler = Scaler.fit(arrays.features, rows_covered(split.train, seq_len, arrays.n_rows), arrays.feature_names)
    prices = _read_prices(labelled, settings.labelling.price_column, arrays.n_rows) if with_prices else None
    return PreparedData(arrays, windows, split, scaler, seq_len, n_levels, lookahead, labelled, prices)
