"""What the ML stages train on: the labelled days of a range → features, targets, windows,
walk-forward folds and the test block, scalers.

The labelled days come from `{DATA_DIR}/L2/labelled/{suffix}/`, the range from training.yaml
`data.start` / `data.end` (null: the first / last labelled day present); a gap in the range fails
with `MissingDaysError` naming the missing days.

    settings = load_settings()
    data = prepare_data(settings, n_levels=10, seq_len=30)   # features, targets, folds, split, scaler
    train_ds, val_ds = data.fold_datasets(0)                  # fold 1 of optimization.yaml `folds`

`data.split` is the final model's: the last fold's training ends, its validation block (early
stopping) and the test block. Each fold scales with statistics of its own training rows only.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
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
from .splits import Split, WalkForward, test_start_minute, walk_forward_split

if TYPE_CHECKING:
    from ..settings import Settings

log = logging.getLogger(__name__)

__all__ = ["MissingDaysError", "NoLabelledDaysError", "PreparedData", "labelled_range", "prepare_data",
           "range_test_start"]


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
    walk: WalkForward  # the walk-forward folds over the development period and the test block
    scaler: Scaler  # fitted on the rows inside the final split's training windows only
    seq_len: int
    n_levels: int
    lookahead: int
    labelled: LabelledRange
    prices: np.ndarray | None = None  # the label price column per row
    bid: np.ndarray | None = None  # best bid / ask at each minute's close (the backtest trades at them)
    ask: np.ndarray | None = None
    walk_test_share: float = 0.15  # training.yaml split.test this data was cut with
    _fold_scalers: dict[int, Scaler] = field(default_factory=dict, repr=False)  # fitted once per fold

    @property
    def split(self) -> Split:
        """The final model's split: the last fold's training ends and validation block, the test block."""
        return self.walk.final

    @property
    def folds(self) -> list[Split]:
        return self.walk.folds

    def fold_scaler(self, k: int) -> Scaler:
        """A scaler fitted on fold k's training rows (the last fold's is `scaler`)."""
        if k in (-1, len(self.folds) - 1):
            return self.scaler
        if k not in self._fold_scalers:
            rows = rows_covered(self.folds[k].train, self.seq_len, self.arrays.n_rows)
            self._fold_scalers[k] = Scaler.fit(self.features, rows, self.arrays.feature_names)
        return self._fold_scalers[k]

    def fold_datasets(self, k: int) -> tuple[Any, Any]:
        """(train, validation) `SequenceDataset`s of fold k, scaled with its own training rows' statistics."""
        from .dataset import SequenceDataset

        fold, scaler = self.folds[k], self.fold_scaler(k)
        return (SequenceDataset(self.features, self.targets, fold.train, self.seq_len, scaler),
                SequenceDataset(self.features, self.targets, fold.val, self.seq_len, scaler))

    def period(self, ends: np.ndarray) -> tuple[dt.datetime, dt.datetime] | None:
        """(first, last) window end of `ends` as UTC times, None when empty."""
        if not ends.size:
            return None
        return (_utc(self.minutes[int(ends[0])]), _utc(self.minutes[int(ends[-1])]))

    @property
    def test_start(self) -> dt.datetime:
        """The minute the test block starts (see `range_test_start`)."""
        return _utc(test_start_minute(self.minutes, self.walk_test_share))

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
        folds = ", ".join(f"{f.train.size:,}/{f.val.size:,}" for f in self.folds)
        return (f"Data: {len(days)} labelled day(s) {days[0]}..{days[-1]} | {self.arrays.n_rows:,} rows | "
                f"{self.n_features} features ({self.n_levels} levels) | seq_len {self.seq_len} | "
                f"{len(self.folds)} walk-forward folds (train/val windows: {folds}) | "
                f"test {s['test']:,} windows | purge {self.split.purge} min")


def range_test_start(settings: Settings, labelled: LabelledRange) -> dt.datetime:
    """When the range's test block starts (UTC): the minute `prepare_data` cuts at, read from the
    rows' times alone (cheap: no features)."""
    minutes = np.concatenate([frame.get_column("ts").dt.epoch("ms").to_numpy() // 60_000
                              for _day, frame in labelled.iter_days(["ts"])])
    return _utc(test_start_minute(minutes, settings.training.split.test))


def _utc(minute: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(minute) * 60, dt.UTC)


def _read_columns(labelled: LabelledRange, columns: list[str], n_rows: int) -> list[np.ndarray]:
    """Float64 columns of the labelled range, one array per column, aligned with the feature rows."""
    parts: list[list[np.ndarray]] = [[] for _ in columns]
    for _day, frame in labelled.iter_days(columns):
        for part, column in zip(parts, columns):
            part.append(frame.get_column(column).cast(float).to_numpy())
    out = [np.concatenate(part) if part else np.zeros(0) for part in parts]
    if any(a.size != n_rows for a in out):
        raise ValueError(f"read {[a.size for a in out]} values of {columns} for {n_rows} rows")
    return out


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
    """Labelled days → float32 feature matrix → usable windows → purged walk-forward folds
    (optimization.yaml `folds`, `embargo_minutes`) and test block (training.yaml `split.test`) → a
    scaler fitted on the final split's training rows. `arrays` reuses a matrix already built for
    `n_levels`; `with_prices` also reads the label price and the best bid / ask."""
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
    opt = settings.optimization
    try:
        # the test block starts at a fixed minute of the range's rows: the same for every seq_len and n_levels
        walk = walk_forward_split(windows.ends, lookahead, seq_len, settings.training.split.test, opt.folds,
                                  arrays.minutes, opt.embargo_minutes,
                                  test_start_minute(arrays.minutes, settings.training.split.test))
    except ValueError as exc:
        raise ValueError(f"too few usable windows: {len(windows)} windows of {seq_len} minutes over "
                         f"{len(labelled.days)} day(s): {exc}: label more days, shorten seq_len or use fewer folds"
                         ) from exc
    if len(walk.folds) < opt.folds:
        log.warning(f"{opt.folds - len(walk.folds)} of {opt.folds} walk-forward folds hold no window after the purge "
                    f"of {walk.purge} min: {len(walk.folds)} used")
    split = walk.final
    if not split.train.size or not split.val.size:
        raise ValueError(
            f"too few usable windows for a split: {len(windows)} windows of {seq_len} minutes over "
            f"{len(labelled.days)} day(s) give train {split.train.size} / val {split.val.size} / test "
            f"{split.test.size} (purge {split.purge} min): label more days or shorten seq_len"
        )
    scaler = Scaler.fit(arrays.features, rows_covered(split.train, seq_len, arrays.n_rows), arrays.feature_names)
    prices = bid = ask = None
    if with_prices:
        prices, bid, ask = _read_columns(labelled, [settings.labelling.price_column, "bid_px_0", "ask_px_0"],
                                         arrays.n_rows)
    return PreparedData(arrays, windows, walk, scaler, seq_len, n_levels, lookahead, labelled, prices, bid, ask,
                        settings.training.split.test)
