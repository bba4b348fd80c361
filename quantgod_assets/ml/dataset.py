"""The training dataset: labelled days -> one float32 feature matrix -> index windows.

Memory is the design constraint: a year of minutes (525,600 rows) at 200 levels (807 features)
is 1.7 GB of float32. The matrix is filled day by day (never a year of Float64 book columns in
memory), and sequences are windows of row indices into it, never an N x seq_len x F copy.

torch is imported only when `SequenceDataset` is first used.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ..labelling import as_date
from .features import frame_features, n_features, required_columns

__all__ = [
    "MAX_SEQ_LEN",
    "NO_TARGET",
    "BlockScaler",
    "LabelledRange",
    "MissingDaysError",
    "Scaler",
    "TrainingArrays",
    "WindowIndex",
    "build_training_arrays",
    "concat_training_arrays",
    "estimated_memory_bytes",
    "load_labelled_range",
    "rows_covered",
]

MAX_SEQ_LEN = 720
NO_TARGET = -1  # `targets` arrays hold int8 0/1/2, and this where the label is null
MINUTE_MS = 60_000


# ---------------------------------------------------------------------------------------------
# Reading a range of labelled days


class MissingDaysError(FileNotFoundError):
    """Days in a requested range that have no labelled file."""

    def __init__(self, label_dir: Path, days: Sequence[dt.date]):
        self.label_dir = Path(label_dir)
        self.days = list(days)
        super().__init__(
            f"{len(self.days)} labelled day(s) missing in {self.label_dir}: {_day_runs(self.days)}"
        )


def _day_runs(days: Sequence[dt.date]) -> str:
    """`2025-03-14, 2025-03-16..2025-03-20`: consecutive days folded into runs."""
    runs: list[list[dt.date]] = []
    for day in sorted(days):
        if runs and day - runs[-1][1] == dt.timedelta(days=1):
            runs[-1][1] = day
        else:
            runs.append([day, day])
    return ", ".join(a.isoformat() if a == b else f"{a.isoformat()}..{b.isoformat()}" for a, b in runs)


@dataclass
class LabelledRange:
    """The labelled days of [start, end] (both inclusive) in one suffix folder."""

    label_dir: Path
    start: dt.date
    end: dt.date
    days: list[dt.date]  # days with a file, in time order
    files: list[Path]  # their files, same order
    missing_days: list[dt.date]
    columns: list[str] | None = None  # None: every column

    @property
    def complete(self) -> bool:
        return not self.missing_days

    def missing_message(self) -> str:
        if not self.missing_days:
            return f"all {len(self.days)} days from {self.start} to {self.end} are labelled"
        return str(MissingDaysError(self.label_dir, self.missing_days))

    def raise_if_missing(self) -> None:
        """Raises `MissingDaysError` naming the missing days, if there are any."""
        if self.missing_days:
            raise MissingDaysError(self.label_dir, self.missing_days)

    def _selection(self, columns: Sequence[str] | None) -> list[str] | None:
        columns = list(columns) if columns is not None else self.columns
        if columns is None:
            return None
        return columns if "ts" in columns else ["ts", *columns]

    def scan(self, columns: Sequence[str] | None = None) -> pl.LazyFrame:
        """One lazy, time-ordered frame over the present days, reading only `columns` (+ `ts`)."""
        if not self.files:
            raise MissingDaysError(self.label_dir, self.missing_days)
        frame = pl.scan_parquet([str(f) for f in self.files])
        selection = self._selection(columns)
        return frame if selection is None else frame.select(selection)

    def iter_days(self, columns: Sequence[str] | None = None) -> Iterator[tuple[dt.date, pl.DataFrame]]:
        """(day, frame) one day at a time, for building big arrays with small temporaries."""
        selection = self._selection(columns)
        for day, path in zip(self.days, self.files):
            frame = pl.scan_parquet(path)
            if selection is not None:
                frame = frame.select(selection)
            yield day, frame.collect().sort("ts")

    def row_counts(self) -> list[int]:
        import pyarrow.parquet as pq

        return [pq.read_metadata(path).num_rows for path in self.files]


def load_labelled_range(
    label_dir: str | Path,
    start: dt.date | str,
    end: dt.date | str,
    columns: Sequence[str] | None = None,
) -> LabelledRange:
    """The labelled days from `start` to `end` (inclusive) in `label_dir` (a suffix folder,
    `{DATA_DIR}/L2/labelled/{suffix}`), with the days that have no file in `.missing_days`.

    Nothing is read yet: `.scan()` is a lazy polars frame of only the needed columns,
    `.iter_days()` reads one day at a time. Call `.raise_if_missing()` to refuse gaps.
    """
    start, end = as_date(start), as_date(end)
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    label_dir = Path(label_dir)
    days, files, missing = [], [], []
    day = start
    while day <= end:
        path = label_dir / f"{day.isoformat()}.parquet"
        if path.exists():
            days.append(day)
            files.append(path)
        else:
            missing.append(day)
        day += dt.timedelta(days=1)
    return LabelledRange(label_dir, start, end, days, files, missing, list(columns) if columns else None)


# ---------------------------------------------------------------------------------------------
# The arrays


@dataclass
class TrainingArrays:
    features: np.ndarray  # float32 [N, F], NaN where an input is missing
    feature_names: list[str]
    valid: np.ndarray  # bool [N]
    targets: np.ndarray  # int8 [N]: 0 SELL, 1 NEUTRAL, 2 BUY, NO_TARGET (-1) where null
    minutes: np.ndarray  # int64 [N]: minutes since the epoch (UTC), to see gaps between rows
    days: list[dt.date]
    missing_days: list[dt.date] = field(default_factory=list)
    n_levels: int = 0

    @property
    def n_rows(self) -> int:
        return int(self.features.shape[0])


def estimated_memory_bytes(n_rows: int, n_levels: int) -> int:
    """The bytes `build_training_arrays` keeps: features, valid, targets, minutes (no windows)."""
    return n_rows * (4 * n_features(n_levels) + 1 + 1 + 8)


def build_training_arrays(labelled: LabelledRange, n_levels: int) -> TrainingArrays:
    """Features, validity, targets and times of every row of the range, filled one day at a time.

    Missing days simply leave a gap in `minutes`; `WindowIndex` never lets a window cross it.
    """
    counts = labelled.row_counts()
    total = int(sum(counts))
    width = n_features(n_levels)
    features = np.empty((total, width), dtype=np.float32)
    valid = np.zeros(total, dtype=bool)
    targets = np.full(total, NO_TARGET, dtype=np.int8)
    minutes = np.zeros(total, dtype=np.int64)
    names: list[str] = []
    previous: tuple[int | None, float] | None = None
    offset = 0
    for (day, frame), count in zip(labelled.iter_days([*required_columns(n_levels), "target"]), counts):
        if frame.height != count:
            raise ValueError(f"{day}: read {frame.height} rows, the file says {count}")
        rows = slice(offset, offset + count)
        block = frame_features(frame, n_levels, out=features[rows], previous=previous)
        names = block.names
        valid[rows] = block.valid
        targets[rows] = frame.get_column("target").fill_null(NO_TARGET).cast(pl.Int8).to_numpy()
        ts_ms = frame.get_column("ts").dt.epoch("ms").to_numpy().astype(np.int64)
        minutes[rows] = ts_ms // MINUTE_MS
        if offset and count and minutes[offset] <= minutes[offset - 1]:
            raise ValueError(f"{day}: rows are not after the previous day's")
        previous = (block.last_ts_ms, block.last_mid)
        offset += count
    if not names:
        from .features import feature_names

        names = feature_names(n_levels)
    return TrainingArrays(features, names, valid, targets, minutes, list(labelled.days),
                          list(labelled.missing_days), n_levels)


def concat_training_arrays(blocks: Sequence[TrainingArrays]) -> TrainingArrays:
    """Several instruments' arrays stacked into one matrix, block after block (the first as is when
    there is one). `minutes` restart at every block: windows must be built per block."""
    if not blocks:
        raise ValueError("no arrays to concatenate")
    if len(blocks) == 1:
        return blocks[0]
    first = blocks[0]
    if any(b.feature_names != first.feature_names or b.n_levels != first.n_levels for b in blocks):
        raise ValueError("the instruments' arrays have different features")
    days = sorted({d for b in blocks for d in b.days})
    missing = sorted({d for b in blocks for d in b.missing_days})
    return TrainingArrays(np.concatenate([b.features for b in blocks]), list(first.feature_names),
                          np.concatenate([b.valid for b in blocks]), np.concatenate([b.targets for b in blocks]),
                          np.concatenate([b.minutes for b in blocks]), days, missing, first.n_levels)


# ---------------------------------------------------------------------------------------------
# Windows


def _check_seq_len(seq_len: int) -> int:
    if not 1 <= int(seq_len) <= MAX_SEQ_LEN:
        raise ValueError(f"seq_len must be in 1..{MAX_SEQ_LEN}, got {seq_len}")
    return int(seq_len)


@dataclass
class WindowIndex:
    """Window end rows `ends` (int64, ascending): the window of end e is rows e-seq_len+1 .. e.

    A window is kept only when its seq_len rows are all valid, consecutive minutes (no missing
    day or other gap inside) and the end row's target is set. O(N) memory, whatever seq_len is.
    """

    ends: np.ndarray
    seq_len: int
    n_rows: int

    @classmethod
    def build(
        cls,
        valid: np.ndarray,
        targets: np.ndarray,
        seq_len: int,
        minutes: np.ndarray | None = None,
    ) -> WindowIndex:
        seq_len = _check_seq_len(seq_len)
        valid = np.asarray(valid, dtype=bool)
        n = valid.size
        if np.asarray(targets).shape != (n,) or (minutes is not None and np.asarray(minutes).shape != (n,)):
            raise ValueError("valid, targets and minutes must have the same length")
        # A run restarts at every invalid row and at every row that does not follow its
        # predecessor by exactly one minute; run_length[e] = valid consecutive rows ending at e.
        breaks = ~valid
        if minutes is not None:
            steps = np.diff(np.asarray(minutes, dtype=np.int64))
            if (steps <= 0).any():
                raise ValueError("minutes must be strictly increasing")
            breaks[1:] |= steps != 1  # the row after a gap starts a new run
        index = np.arange(n, dtype=np.int64)
        # the last row at or before e that starts a run (an invalid row counts as its own start)
        starts = np.where(breaks | ~valid, index, 0)
        starts[0] = 0
        np.maximum.accumulate(starts, out=starts)
        run_start = np.where(valid[starts], starts, starts + 1)  # an invalid row is not in the run
        run_length = index - run_start + 1
        del starts, run_start
        usable = valid & (run_length >= seq_len) & (np.asarray(targets) >= 0)
        return cls(np.flatnonzero(usable).astype(np.int64), seq_len, n)

    def __len__(self) -> int:
        return int(self.ends.size)

    def rows(self, i: int) -> slice:
        e = int(self.ends[i])
        return slice(e - self.seq_len + 1, e + 1)


def rows_covered(ends: np.ndarray, seq_len: int, n_rows: int) -> np.ndarray:
    """Boolean [n_rows]: the rows that are inside at least one window ending at `ends`."""
    marks = np.zeros(n_rows + 1, dtype=np.int32)
    ends = np.asarray(ends, dtype=np.int64)
    np.add.at(marks, ends - seq_len + 1, 1)
    np.add.at(marks, ends + 1, -1)
    return np.cumsum(marks[:-1]) > 0


# ---------------------------------------------------------------------------------------------
# Scaling


@dataclass
class Scaler:
    """Per-feature mean / std, fitted on training rows only; saved with the model via `to_dict`."""

    mean: np.ndarray  # float64 [F]
    std: np.ndarray  # float64 [F], 1 where a feature is constant
    names: list[str] | None = None
    n_rows: int = 0

    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        rows: np.ndarray,
        names: Sequence[str] | None = None,
        chunk_rows: int = 16_384,
    ) -> Scaler:
        """Fits on `features[rows]` (a boolean mask or row indices), chunk by chunk: no copy of the
        training rows is made. Non-finite rows are skipped."""
        rows = np.asarray(rows)
        index = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.int64)
        width = features.shape[1]
        count = 0
        mean = np.zeros(width)
        m2 = np.zeros(width)
        for start in range(0, index.size, chunk_rows):
            chunk = features[index[start : start + chunk_rows]].astype(np.float64)
            chunk = chunk[np.isfinite(chunk).all(axis=1)]
            if not chunk.shape[0]:
                continue
            # Chan et al.: merge the chunk's mean and sum of squared deviations into the total's
            n_b = chunk.shape[0]
            mean_b = chunk.mean(axis=0)
            m2_b = ((chunk - mean_b) ** 2).sum(axis=0)
            delta = mean_b - mean
            total = count + n_b
            mean = mean + delta * (n_b / total)
            m2 = m2 + m2_b + delta**2 * (count * n_b / total)
            count = total
        if count == 0:
            raise ValueError("no finite training rows to fit the scaler on")
        std = np.sqrt(m2 / count)
        std[~(std > 1e-12)] = 1.0
        return cls(mean, std, list(names) if names is not None else None, count)

    def transform(self, values: np.ndarray) -> np.ndarray:
        """A scaled float32 copy (for one window or a small batch)."""
        return ((values - self.mean) / self.std).astype(np.float32)

    def at(self, row: int) -> Scaler:
        """The scaler of matrix row `row`: this one (a `BlockScaler` picks the row's instrument's)."""
        return self

    def transform_rows(self, features: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """`features[rows]` scaled (float32 copy)."""
        return self.transform(features[np.asarray(rows, dtype=np.int64)])

    def transform_inplace(self, features: np.ndarray, chunk_rows: int = 16_384) -> np.ndarray:
        """Scales a float32 matrix in place, chunk by chunk (no second matrix)."""
        mean = self.mean.astype(np.float32)
        std = self.std.astype(np.float32)
        for start in range(0, features.shape[0], chunk_rows):
            chunk = features[start : start + chunk_rows]
            chunk -= mean
            chunk /= std
        return features

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "names": self.names,
            "n_rows": self.n_rows,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scaler:
        return cls(
            np.asarray(data["mean"], dtype=np.float64),
            np.asarray(data["std"], dtype=np.float64),
            data.get("names"),
            int(data.get("n_rows", 0)),
        )


@dataclass
class BlockScaler:
    """One `Scaler` per instrument block of a stacked matrix (`block_starts[b]`: the first row of
    block b, ascending from 0): each instrument is scaled with statistics of its own training rows,
    since the instruments' sizes (log sizes among the features) differ in scale."""

    scalers: list[Scaler]
    block_starts: np.ndarray  # int64 [B]
    keys: list[str]  # the instruments, `BTCUSDT_linear`

    def __post_init__(self) -> None:
        self.block_starts = np.asarray(self.block_starts, dtype=np.int64)
        if not (len(self.scalers) == self.block_starts.size == len(self.keys)) or not self.scalers:
            raise ValueError("one scaler, block start and key per block")
        if self.block_starts[0] != 0 or (np.diff(self.block_starts) <= 0).any():
            raise ValueError("block starts must ascend from 0")

    @classmethod
    def fit(cls, features: np.ndarray, rows: np.ndarray, block_starts: Sequence[int] | np.ndarray, keys: Sequence[str],
            names: Sequence[str] | None = None) -> BlockScaler:
        """A scaler per block on the block's rows of `rows` (a boolean mask over the matrix)."""
        mask = np.asarray(rows)
        if mask.dtype != bool:
            index, mask = mask, np.zeros(features.shape[0], dtype=bool)
            mask[index.astype(np.int64)] = True
        starts = [int(b) for b in block_starts]
        stops = [*starts[1:], features.shape[0]]
        scalers = []
        for key, lo, hi in zip(keys, starts, stops):
            block_rows = np.flatnonzero(mask[lo:hi]) + lo
            if not block_rows.size:
                raise ValueError(f"{key}: no training rows to fit its scaler on")
            scalers.append(Scaler.fit(features, block_rows, names))
        return cls(scalers, np.asarray(starts, dtype=np.int64), list(keys))

    def block_of(self, rows: np.ndarray | int) -> np.ndarray:
        """The block index of each row."""
        return np.searchsorted(self.block_starts, np.asarray(rows, dtype=np.int64), side="right") - 1

    def at(self, row: int) -> Scaler:
        return self.scalers[int(self.block_of(row))]

    def by_key(self) -> dict[str, Scaler]:
        return dict(zip(self.keys, self.scalers))

    @property
    def mean(self) -> np.ndarray:  # the first instrument's: what a reader of one `Scaler` sees
        return self.scalers[0].mean

    @property
    def std(self) -> np.ndarray:
        return self.scalers[0].std

    @property
    def names(self) -> list[str] | None:
        return self.scalers[0].names

    @property
    def n_rows(self) -> int:
        return int(sum(s.n_rows for s in self.scalers))

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Rows of unknown instrument: the FIRST instrument's statistics (the bundle's default
        `scaler`); use `transform_rows` or `at(row)` to scale matrix rows by their instrument."""
        return self.scalers[0].transform(values)

    def transform_rows(self, features: np.ndarray, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((rows.size, features.shape[1]), dtype=np.float32)
        blocks = self.block_of(rows)
        for b, scaler in enumerate(self.scalers):
            chosen = blocks == b
            if chosen.any():
                out[chosen] = scaler.transform(features[rows[chosen]])
        return out

    def to_dict(self) -> dict[str, Any]:
        """The first instrument's `Scaler.to_dict()` (old readers), plus every instrument's by key."""
        return {**self.scalers[0].to_dict(), "instruments": {k: s.to_dict() for k, s in self.by_key().items()},
                "block_starts": self.block_starts.tolist()}


# ---------------------------------------------------------------------------------------------
# torch Dataset (torch imported on first use)


class _SequenceDatasetBase:
    """Item i: (features[e-seq_len+1 : e+1] as float32 tensor [seq_len, F], target[e] as int64),
    e = ends[i]. Only the requested window is copied (and scaled, when a scaler is given)."""

    def __init__(
        self,
        features: np.ndarray,
        targets: np.ndarray,
        ends: np.ndarray | WindowIndex,
        seq_len: int | None = None,
        scaler: Scaler | BlockScaler | None = None,
    ):
        if isinstance(ends, WindowIndex):
            seq_len = ends.seq_len if seq_len is None else seq_len
            ends = ends.ends
        if seq_len is None:
            raise ValueError("seq_len is needed when ends is a plain array")
        self.seq_len = _check_seq_len(seq_len)
        self.features = features
        self.targets = np.asarray(targets)
        self.ends = np.asarray(ends, dtype=np.int64)
        self.scaler = scaler
        if self.ends.size:
            if self.ends.min() < self.seq_len - 1 or self.ends.max() >= features.shape[0]:
                raise ValueError("a window reaches outside the feature matrix")
            if (self.targets[self.ends] < 0).any():
                raise ValueError("a window ends on a row without a target")

    def __len__(self) -> int:
        return int(self.ends.size)

    def __getitem__(self, i: int):
        import torch

        e = int(self.ends[i])
        window = self.features[e - self.seq_len + 1 : e + 1]
        # the scaler of the window's end row: a `BlockScaler` applies that instrument's statistics
        window = self.scaler.at(e).transform(window) if self.scaler is not None else np.array(window, dtype=np.float32)
        return torch.from_numpy(window), torch.tensor(int(self.targets[e]), dtype=torch.int64)


_dataset_class: type | None = None


def _sequence_dataset_class() -> type:
    global _dataset_class
    if _dataset_class is None:
        from torch.utils.data import Dataset

        _dataset_class = type(
            "SequenceDataset",
            (_SequenceDatasetBase, Dataset),
            {"__module__": __name__, "__doc__": _SequenceDatasetBase.__doc__},
        )
    return _dataset_class


def __getattr__(name: str):
    # `SequenceDataset` subclasses torch's Dataset; building it on first access keeps
    # `import quantgod_assets.ml.dataset` (and so the data assets) free of torch.
    if name == "SequenceDataset":
        return _sequence_dataset_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
