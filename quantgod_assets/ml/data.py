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

Several instruments (training.yaml `instruments`): each instrument's labelled days over the same
range are built into its own block of rows and the blocks are stacked into one matrix
(`data.block_starts`, `data.instrument_keys`); windows are built per block, so none crosses
instruments. The cut is by calendar: the test block starts at the same minute for every
instrument, and the walk-forward folds are cut at the same minutes, purged against the last
training minute of any instrument (`splits.calendar_walk_forward`). Each instrument is scaled with
statistics of its own training rows (`dataset.BlockScaler`). One instrument is exactly one block.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .dataset import (
    BlockScaler,
    LabelledRange,
    MissingDaysError,
    Scaler,
    TrainingArrays,
    WindowIndex,
    build_training_arrays,
    concat_training_arrays,
    load_labelled_range,
    rows_covered,
)
from .splits import Split, WalkForward, calendar_walk_forward, test_start_minute

if TYPE_CHECKING:
    from ..settings import Settings

log = logging.getLogger(__name__)

__all__ = [
    "MissingDaysError",
    "NoLabelledDaysError",
    "PreparedData",
    "TooFewWindowsError",
    "UnseenData",
    "labelled_range",
    "prepare_data",
    "range_test_start",
    "training_ranges",
    "unseen_data",
]

KEY_SHIFT = 1 << 40  # minutes between instrument blocks in `keyed_minutes`: far beyond any calendar span


class TooFewWindowsError(ValueError):
    """The labelled days give too few usable windows for the folds, the split or the test block."""


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


def _first_last_present(settings: Settings) -> tuple[str, str] | None:
    label_dir = _label_dir(settings)
    present = sorted(p.stem for p in label_dir.glob("????-??-??.parquet")) if label_dir.is_dir() else []
    return (present[0], present[-1]) if present else None


def training_ranges(settings: Settings, start: dt.date | str | None = None, end: dt.date | str | None = None,
                    instruments: Sequence[Any] | None = None) -> list[LabelledRange]:
    """One `labelled_range` per training instrument (training.yaml `instruments`, or `instruments`),
    all over the SAME days: [start, end], where an open end is the latest first / earliest last
    labelled day the instruments share. A missing day raises `MissingDaysError` naming the
    instrument."""
    chosen = list(instruments) if instruments is not None else list(settings.training_instruments)
    per = [settings.for_instrument(i) for i in chosen]
    start = start or settings.training.data.start
    end = end or settings.training.data.end
    if len(per) > 1 and (start is None or end is None):
        spans = []
        for inst, s in zip(chosen, per):
            span = _first_last_present(s)
            if span is None:
                raise NoLabelledDaysError(f"{_key(inst)}: no labelled days in {_label_dir(s)} (label suffix "
                                          f"{settings.labelling.suffix}): materialize labelled_frame first")
            spans.append(span)
        start = start or max(a for a, _ in spans)
        end = end or min(b for _, b in spans)
    out = []
    for inst, s in zip(chosen, per):
        try:
            out.append(labelled_range(s, start, end))
        except MissingDaysError as exc:
            exc.args = (f"{_key(inst)}: {exc}",)
            raise
    return out


def _key(instrument: Any) -> str:
    return str(getattr(instrument, "key", instrument))


class _ArrayColumns:
    """`features`, `targets`, `minutes` of the `arrays` a prepared range holds."""

    arrays: TrainingArrays

    @property
    def features(self) -> np.ndarray:
        return self.arrays.features

    @property
    def targets(self) -> np.ndarray:
        return self.arrays.targets

    @property
    def minutes(self) -> np.ndarray:
        return self.arrays.minutes


@dataclass
class PreparedData(_ArrayColumns):
    """Everything a model needs from the labelled range, for one (n_levels, seq_len)."""

    arrays: TrainingArrays
    windows: WindowIndex
    walk: WalkForward  # the walk-forward folds over the development period and the test block
    scaler: Scaler | BlockScaler  # fitted on the rows inside the final split's training windows only
    seq_len: int
    n_levels: int
    lookahead: int
    labelled: LabelledRange
    prices: np.ndarray | None = None  # the label price column per row
    bid: np.ndarray | None = None  # best bid / ask at each minute's close (the backtest trades at them)
    ask: np.ndarray | None = None
    walk_test_share: float = 0.15  # training.yaml split.test this data was cut with
    instrument_keys: list[str] = field(default_factory=list)  # the instruments of the blocks, in order
    block_starts: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=np.int64))  # first row of each block
    labelled_ranges: list[LabelledRange] = field(default_factory=list)  # one per instrument (the first: `labelled`)
    cut_minute: int | None = None  # the minute the test block starts, for every instrument
    _fold_scalers: dict[int, Scaler | BlockScaler] = field(default_factory=dict, repr=False)  # fitted once per fold
    _keyed: np.ndarray | None = field(default=None, repr=False)

    @property
    def split(self) -> Split:
        """The final model's split: the last fold's training ends and validation block, the test block."""
        return self.walk.final

    @property
    def folds(self) -> list[Split]:
        return self.walk.folds

    def fold_scaler(self, k: int) -> Scaler | BlockScaler:
        """A scaler fitted on fold k's training rows (the last fold's is `scaler`), per instrument
        when there are several."""
        if k in (-1, len(self.folds) - 1):
            return self.scaler
        if k not in self._fold_scalers:
            rows = rows_covered(self.folds[k].train, self.seq_len, self.arrays.n_rows)
            self._fold_scalers[k] = _fit_scaler(self.arrays, rows, self.block_starts, self.instrument_keys)
        return self._fold_scalers[k]

    # ---- instruments

    @property
    def n_instruments(self) -> int:
        return int(self.block_starts.size)

    def block_rows(self, b: int) -> slice:
        """The rows of instrument block b."""
        stop = int(self.block_starts[b + 1]) if b + 1 < self.block_starts.size else self.arrays.n_rows
        return slice(int(self.block_starts[b]), stop)

    def instrument_of(self, rows: np.ndarray) -> np.ndarray:
        """The block index (into `instrument_keys`) of each row or window end."""
        return np.searchsorted(self.block_starts, np.asarray(rows, dtype=np.int64), side="right") - 1

    def instrument_ends(self, ends: np.ndarray, instrument: int | str) -> np.ndarray:
        """The ends of `ends` on one instrument (a block index or key)."""
        b = self.instrument_keys.index(instrument) if isinstance(instrument, str) else int(instrument)
        ends = np.asarray(ends, dtype=np.int64)
        return ends[self.instrument_of(ends) == b]

    @property
    def keyed_minutes(self) -> np.ndarray:
        """`minutes` made strictly increasing over the stacked blocks (block b shifted by
        b * KEY_SHIFT): a look-up by minute (persistence, gaps) never reaches another instrument.
        The minutes themselves for one instrument."""
        if self.n_instruments == 1:
            return self.minutes
        if self._keyed is None:
            self._keyed = self.minutes + self.instrument_of(np.arange(self.arrays.n_rows)) * KEY_SHIFT
        return self._keyed

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
        """The minute the test block starts, the same for every instrument (see `range_test_start`)."""
        if self.cut_minute is not None:
            return _utc(self.cut_minute)
        return _utc(test_start_minute(self.minutes, self.walk_test_share))

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
        instruments = (f"{self.n_instruments} instruments ({', '.join(self.instrument_keys)}) | "
                       if self.n_instruments > 1 else "")
        return (f"Data: {instruments}{len(days)} labelled day(s) {days[0]}..{days[-1]} | {self.arrays.n_rows:,} rows | "
                f"{self.n_features} features ({self.n_levels} levels) | seq_len {self.seq_len} | "
                f"{len(self.folds)} walk-forward folds (train/val windows: {folds}) | "
                f"test {s['test']:,} windows | purge {self.split.purge} min")


def range_test_start(settings: Settings, labelled: LabelledRange | Sequence[LabelledRange]) -> dt.datetime:
    """When the range's test block starts (UTC): the minute `prepare_data` cuts at, read from the
    rows' times alone (cheap: no features); over several instruments' ranges, from the union of
    their minutes (one calendar cut for all)."""
    ranges = [labelled] if isinstance(labelled, LabelledRange) else list(labelled)
    minutes = [np.concatenate([frame.get_column("ts").dt.epoch("ms").to_numpy() // 60_000
                               for _day, frame in r.iter_days(["ts"])]) for r in ranges]
    return _utc(_cut_minute(minutes, settings.training.split.test))


def _cut_minute(minutes: Sequence[np.ndarray], test_share: float) -> int:
    """The test block's first minute: the first of the last `test_share` of the calendar minutes
    some instrument has a row at (one instrument: of its rows, as always)."""
    union = minutes[0] if len(minutes) == 1 else np.unique(np.concatenate(list(minutes)))
    return test_start_minute(union, test_share)


def _fit_scaler(arrays: TrainingArrays, rows: np.ndarray, block_starts: np.ndarray,
                keys: Sequence[str]) -> Scaler | BlockScaler:
    """A `Scaler` on `rows` (one instrument), else one per instrument block on its own rows."""
    if block_starts.size == 1:
        return Scaler.fit(arrays.features, rows, arrays.feature_names)
    return BlockScaler.fit(arrays.features, rows, block_starts, keys, arrays.feature_names)


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
    arrays: TrainingArrays | Sequence[TrainingArrays] | None = None,
    labelled: LabelledRange | Sequence[LabelledRange] | None = None,
    with_prices: bool = False,
    instruments: Sequence[Any] | None = None,
) -> PreparedData:
    """Labelled days → float32 feature matrix → usable windows → purged walk-forward folds
    (optimization.yaml `folds`, `embargo_minutes`) and test block (training.yaml `split.test`) → a
    scaler fitted on the final split's training rows. `arrays` reuses a matrix already built for
    `n_levels`; `with_prices` also reads the label price and the best bid / ask.

    Over several instruments (training.yaml `instruments`, or `instruments`), `labelled` and
    `arrays` are one per instrument, in order; see the module's docstring."""
    n_levels = int(n_levels or settings.training.n_levels)
    seq_len = int(seq_len or settings.training.seq_len)
    lookahead = int(settings.labelling.lookahead)
    chosen = list(instruments) if instruments is not None else list(settings.training_instruments)
    keys = [_key(i) for i in chosen]
    if labelled is None:
        ranges = training_ranges(settings, start, end, chosen)
    else:
        ranges = [labelled] if isinstance(labelled, LabelledRange) else list(labelled)
    if len(ranges) != len(keys):
        raise ValueError(f"{len(ranges)} labelled range(s) for {len(keys)} instrument(s) {keys}")
    if arrays is None:
        blocks = [build_training_arrays(r, n_levels) for r in ranges]
    else:
        blocks = [arrays] if isinstance(arrays, TrainingArrays) else list(arrays)
        if len(blocks) != len(keys):
            raise ValueError(f"{len(blocks)} feature matri(ces) for {len(keys)} instrument(s) {keys}")
        if any(b.n_levels != n_levels for b in blocks):
            raise ValueError(f"arrays hold {blocks[0].n_levels} levels, {n_levels} asked for")
    block_starts = np.cumsum([0] + [b.n_rows for b in blocks[:-1]]).astype(np.int64)
    stacked = concat_training_arrays(blocks)
    # windows per instrument block: none crosses from one instrument into the next
    block_ends = [WindowIndex.build(b.valid, b.targets, seq_len, b.minutes).ends + int(first)
                  for b, first in zip(blocks, block_starts)]
    windows = WindowIndex(np.concatenate(block_ends).astype(np.int64), seq_len, stacked.n_rows)
    opt = settings.optimization
    test_share = settings.training.split.test
    # the test block starts at a fixed minute of the range's calendar: the same for every seq_len,
    # n_levels and instrument
    cut = _cut_minute([b.minutes for b in blocks], test_share)
    n_days = len(ranges[0].days)
    try:
        walk = calendar_walk_forward(windows.ends, stacked.minutes[windows.ends], lookahead, seq_len, opt.folds, cut,
                                     opt.embargo_minutes)
    except ValueError as exc:
        raise TooFewWindowsError(f"too few usable windows: {len(windows)} windows of {seq_len} minutes over "
                         f"{n_days} day(s): {exc}: label more days, shorten seq_len or use fewer folds"
                         ) from exc
    if len(walk.folds) < opt.folds:
        log.warning(f"{opt.folds - len(walk.folds)} of {opt.folds} walk-forward folds hold no window after the purge "
                    f"of {walk.purge} min: {len(walk.folds)} used")
    split = walk.final
    if not split.train.size or not split.val.size:
        raise TooFewWindowsError(
            f"too few usable windows for a split: {len(windows)} windows of {seq_len} minutes over "
            f"{n_days} day(s) give train {split.train.size} / val {split.val.size} / test "
            f"{split.test.size} (purge {split.purge} min): label more days or shorten seq_len"
        )
    scaler = _fit_scaler(stacked, rows_covered(split.train, seq_len, stacked.n_rows), block_starts, keys)
    prices = bid = ask = None
    if with_prices:
        columns = [_read_columns(r, [settings.labelling.price_column, "bid_px_0", "ask_px_0"], b.n_rows)
                   for r, b in zip(ranges, blocks)]
        prices, bid, ask = (np.concatenate([c[j] for c in columns]) for j in range(3))
    return PreparedData(stacked, windows, walk, scaler, seq_len, n_levels, lookahead, ranges[0], prices, bid, ask,
                        test_share, instrument_keys=keys, block_starts=block_starts, labelled_ranges=ranges,
                        cut_minute=cut)


@dataclass
class UnseenData(_ArrayColumns):
    """An instrument the model never trained on, over the training range: its own matrix, its
    windows from the shared calendar cut on (`test`), scaled with statistics of ITS OWN
    development-period rows (the rows of its windows ending before the purge ahead of the cut;
    never its test rows)."""

    key: str
    arrays: TrainingArrays
    windows: WindowIndex
    test: np.ndarray  # window ends at or after the cut
    development: np.ndarray  # window ends at least purge + 1 minutes before the cut
    scaler: Scaler
    seq_len: int
    lookahead: int

    def dataset(self) -> Any:
        """The test windows as a `SequenceDataset`, scaled with this instrument's own statistics."""
        from .dataset import SequenceDataset

        return SequenceDataset(self.features, self.targets, self.test, self.seq_len, self.scaler)


def unseen_data(settings: Settings, data: PreparedData, instrument: Any) -> UnseenData:
    """`instrument` (a key or `Instrument`, never trained on) prepared like `data`: the same days,
    n_levels, seq_len and calendar cut (`data.test_start`), scaled with its own development rows."""
    key = _key(instrument)
    try:
        labelled = labelled_range(settings.for_instrument(instrument), data.labelled.start, data.labelled.end)
    except MissingDaysError as exc:
        exc.args = (f"{key}: {exc}",)
        raise
    arrays = build_training_arrays(labelled, data.n_levels)
    windows = WindowIndex.build(arrays.valid, arrays.targets, data.seq_len, arrays.minutes)
    cut = int(data.test_start.timestamp()) // 60
    times = arrays.minutes[windows.ends]
    test = windows.ends[times >= cut]
    development = windows.ends[times <= cut - data.split.purge - 1]
    if not test.size or not development.size:
        raise TooFewWindowsError(f"{key}: {development.size} development and {test.size} test windows over "
                         f"{labelled.start}..{labelled.end}: nothing to score it on")
    scaler = Scaler.fit(arrays.features, rows_covered(development, data.seq_len, arrays.n_rows), arrays.feature_names)
    return UnseenData(key, arrays, windows, test, development, scaler, data.seq_len, data.lookahead)
