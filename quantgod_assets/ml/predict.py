"""Predictions of a saved model on preprocessed book days: one row per minute.

    predictor = Predictor.load("data/models/quantgod_cloud_model.pth")
    table = predict(predictor, [day_before, day])   # ts, p_sell, p_neutral, p_buy, predicted, ...

Features, scaling and windows are the training's own: `frame_features` day by day with the
previous day's last minute carried, the bundle's scaler, and `WindowIndex` windows of the
bundle's seq_len over valid, consecutive minutes; the batches go through `predict_logits`, the
function that scores the test block, so a minute gets the probabilities training would give it.

A window needs seq_len minutes and the first minute's mid return the minute before it, so the
first minutes of a day get a prediction only when the day before is given too.

torch is imported when a model is loaded, not with this module (`quantgod_assets.ml` exports it).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from ..labelling import CLASS_NAMES
from .dataset import Scaler, WindowIndex
from .features import FEATURE_CODE_HASH, feature_names, frame_features, n_features, required_columns

if TYPE_CHECKING:
    from torch import nn

__all__ = ["OUTPUT_COLUMNS", "BundleError", "Predictor", "missing_columns", "predict", "predict_with_valid",
           "valid_minutes"]

log = logging.getLogger(__name__)

MINUTE_MS = 60_000
BATCH_WINDOWS = 512  # windows a forward pass: a year of minutes never becomes one tensor
PROBABILITY_COLUMNS = ("p_sell", "p_neutral", "p_buy")
OUTPUT_COLUMNS = ("ts", *PROBABILITY_COLUMNS, "predicted", "predicted_label", "has_window")
# any valid class (not NO_TARGET): WindowIndex keeps only ends with a target, and every valid end is
# wanted here; the class itself is never read
ANY_CLASS = 1


class BundleError(ValueError):
    """A model file that is no usable bundle; the message starts with the file."""


def _file_version(path: Path) -> str:
    """The first 12 hex digits of the file's sha256: the same bytes, the same version."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


@dataclass
class Predictor:
    """A loaded bundle: the module in eval mode on the CPU and what it needs to read a day."""

    module: nn.Module
    bundle: dict[str, Any]
    seq_len: int
    n_levels: int
    scaler: Scaler
    feature_names: list[str]
    class_names: tuple[str, ...]
    version: str
    path: Path
    scalers: dict[str, Scaler] | None = None  # per instrument key, for a model trained on several

    @property
    def instruments(self) -> list[str]:
        """The instruments the bundle holds a scaler for (empty: one instrument, its `scaler`)."""
        return list(self.scalers or {})

    def scaler_for(self, instrument: str | None) -> Scaler:
        """The scaler of `instrument` (a key `ETHUSDT_linear` or a bare symbol): a model trained on
        several instruments scales each with its own training statistics. Without an instrument,
        the bundle's one scaler; ValueError, in one line, for an instrument it has none for."""
        if not self.scalers:
            return self.scaler
        if instrument is None:
            if len(self.scalers) == 1:
                return next(iter(self.scalers.values()))
            raise ValueError(f"{self.path.name} was trained on {', '.join(self.scalers)}: name the instrument "
                             "to predict on")
        found = [key for key in self.scalers if key == instrument or key.split("_")[0] == instrument]
        if len(found) != 1:
            raise ValueError(f"{self.path.name} holds no scaling for instrument {instrument!r} (trained on "
                             f"{', '.join(self.scalers)})")
        return self.scalers[found[0]]

    @classmethod
    def load(cls, path: str | Path) -> Predictor:
        """Reads a `save_model` bundle. A missing file raises FileNotFoundError; a file that is
        no bundle, or one lacking what prediction needs, raises `BundleError` naming it."""
        import pickle
        import zipfile

        from .train import load_model

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(2, "no such model file", str(path))
        try:
            module, bundle = load_model(path, device="cpu")
        except ValueError as exc:  # load_model's "not a quantgod-model/1 bundle" (and bad state dicts)
            raise BundleError(f"{path}: {_without_path(exc, path)}") from exc
        except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, KeyError, TypeError) as exc:
            # torch.load of bytes that are no torch file, or a spec that builds no model
            raise BundleError(f"{path}: not a readable model bundle ({type(exc).__name__}: {exc})") from exc
        seq_len, n_levels = _window_shape(bundle, path)
        names = _checked_feature_names(bundle, n_levels, path)
        if bundle.get("scaler") is None:
            raise BundleError(f"{path}: the bundle holds no scaler")
        scaler = Scaler.from_dict(bundle["scaler"])
        if scaler.mean.shape != (len(names),):
            raise BundleError(f"{path}: the scaler has {scaler.mean.size} features, the model {len(names)}")
        feature_hash = bundle.get("extra", {}).get("feature_hash")
        if feature_hash not in (None, FEATURE_CODE_HASH):
            # same names, maybe other formulas: worth a line, not a refusal (old models stay usable)
            log.warning(f"{path} was trained with feature code {feature_hash}, this is {FEATURE_CODE_HASH}")
        classes = tuple(bundle.get("label_settings", {}).get("classes") or CLASS_NAMES)
        scalers = {key: Scaler.from_dict(d) for key, d in (bundle["scaler"].get("instruments") or {}).items()}
        return cls(module, bundle, seq_len, n_levels, scaler, names, classes, _file_version(path), path,
                   scalers or None)

    def probabilities(self, features: np.ndarray, ends: np.ndarray, batch_size: int = BATCH_WINDOWS,
                      instrument: str | None = None) -> np.ndarray:
        """float32 [len(ends), 3]: the softmax of the logits of the windows ending at `ends` of the
        raw (unscaled) `features`, batched and scaled exactly as training evaluates its windows
        (with `instrument`'s statistics for a model trained on several)."""
        import torch

        from .dataset import SequenceDataset
        from .train import predict_logits

        targets = np.full(features.shape[0], ANY_CLASS, dtype=np.int8)
        windows = SequenceDataset(features, targets, ends, self.seq_len, self.scaler_for(instrument))
        logits = predict_logits(self.module, windows, batch_size=batch_size, device="cpu")
        return torch.softmax(torch.from_numpy(logits), dim=1).numpy()


def _without_path(exc: Exception, path: Path) -> str:
    return str(exc).removeprefix(f"{path} ").strip()


def _window_shape(bundle: dict[str, Any], path: Path) -> tuple[int, int]:
    extra = bundle.get("extra") or {}
    missing = [key for key in ("seq_len", "n_levels") if key not in extra]
    if missing:
        raise BundleError(f"{path}: the bundle records no {' and '.join(missing)}")
    return int(extra["seq_len"]), int(extra["n_levels"])


def _checked_feature_names(bundle: dict[str, Any], n_levels: int, path: Path) -> list[str]:
    """The bundle's feature names, which must be this code's for its n_levels: the model reads
    columns by position, so another order would be silently wrong."""
    expected = feature_names(n_levels)
    names = list(bundle.get("feature_names") or [])
    if names != expected:
        raise BundleError(f"{path}: its {len(names)} feature names are not the {n_features(n_levels)} "
                          f"features of {n_levels} levels this code computes")
    return names


# ---------------------------------------------------------------------------------------------
# Days -> features -> windows -> a table


def missing_columns(frame: pl.DataFrame, n_levels: int) -> list[str]:
    """The book columns a model of `n_levels` reads that `frame` lacks."""
    present = set(frame.columns)
    return [name for name in required_columns(n_levels) if name not in present]


@dataclass
class _Rows:
    features: np.ndarray  # float32 [N, F], raw
    valid: np.ndarray  # bool [N]
    minutes: np.ndarray  # int64 [N], minutes since the epoch
    ts: pl.Series  # the frames' ts, concatenated


def _rows(frames: Sequence[pl.DataFrame], n_levels: int) -> _Rows:
    """The frames' features filled frame by frame into one matrix, each frame's first minute given
    its mid return from the previous frame's last (as `build_training_arrays` does for days)."""
    for k, frame in enumerate(frames):
        lacking = missing_columns(frame, n_levels)
        if lacking:
            raise ValueError(f"frame {k} lacks {len(lacking)} column(s) the model reads: {', '.join(lacking)}")
    total = sum(frame.height for frame in frames)
    features = np.empty((total, n_features(n_levels)), dtype=np.float32)
    valid = np.zeros(total, dtype=bool)
    previous: tuple[int | None, float] | None = None
    offset = 0
    for frame in frames:
        rows = slice(offset, offset + frame.height)
        block = frame_features(frame, n_levels, out=features[rows], previous=previous)
        valid[rows] = block.valid
        previous = (block.last_ts_ms, block.last_mid)
        offset += frame.height
    ts = pl.concat([frame.get_column("ts") for frame in frames])
    minutes = ts.dt.epoch("ms").to_numpy().astype(np.int64) // MINUTE_MS
    if (np.diff(minutes) <= 0).any():
        raise ValueError("the frames' minutes are not in time order (give the days oldest first, each sorted by ts)")
    return _Rows(features, valid, minutes, ts)


def valid_minutes(frames: pl.DataFrame | Sequence[pl.DataFrame], n_levels: int) -> np.ndarray:
    """bool per minute of the frames: every feature the model reads is finite there (what a
    window needs of each of its minutes)."""
    frames = [frames] if isinstance(frames, pl.DataFrame) else list(frames)
    return _rows(frames, n_levels).valid


def _table(ts: pl.Series, ends: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]) -> pl.DataFrame:
    """One row per minute: the window-end minutes get their probabilities, the others nulls."""
    n = ts.len()
    has_window = np.zeros(n, dtype=bool)
    has_window[ends] = True
    full = np.full((n, 3), np.nan, dtype=np.float32)
    full[ends] = probabilities
    predicted = np.zeros(n, dtype=np.int8)
    predicted[ends] = probabilities.argmax(axis=1)
    table = pl.DataFrame([
        ts.alias("ts"),
        *(pl.Series(name, full[:, k], dtype=pl.Float32, nan_to_null=True)
          for k, name in enumerate(PROBABILITY_COLUMNS)),
        pl.Series("predicted", predicted, dtype=pl.Int8),
        pl.Series("has_window", has_window, dtype=pl.Boolean),
    ])
    label = pl.col("predicted").replace_strict(list(range(len(class_names))), list(class_names),
                                               return_dtype=pl.String)
    window = pl.col("has_window")
    return table.with_columns(pl.when(window).then(pl.col("predicted")).alias("predicted"),
                              pl.when(window).then(label).alias("predicted_label")).select(OUTPUT_COLUMNS)


def predict(
    model: str | Path | Predictor,
    frames: pl.DataFrame | Sequence[pl.DataFrame],
    batch_size: int = BATCH_WINDOWS,
    instrument: str | None = None,
) -> pl.DataFrame:
    """Per-minute class probabilities of `model` (a bundle path or a loaded `Predictor`) on one
    preprocessed-book frame or consecutive days' frames, oldest first.

    Returns one row per minute of all the frames, in time order: `ts`, `p_sell`, `p_neutral`,
    `p_buy` (Float32, softmax of the logits), `predicted` (Int8 0/1/2), `predicted_label`
    (SELL/NEUTRAL/BUY) and `has_window` (a complete window of seq_len valid, consecutive minutes
    ends at this minute); the minutes without one have nulls. A frame lacking a column the model
    reads raises ValueError naming the columns. A model trained on several instruments needs
    `instrument` (its key or symbol: the frames' instrument, scaled with its training statistics).
    """
    return predict_with_valid(model, frames, batch_size, instrument)[0]


def predict_with_valid(
    model: str | Path | Predictor,
    frames: pl.DataFrame | Sequence[pl.DataFrame],
    batch_size: int = BATCH_WINDOWS,
    instrument: str | None = None,
) -> tuple[pl.DataFrame, np.ndarray]:
    """`predict`'s table and `valid_minutes`' mask from one pass over the frames' features (the
    daily predictions' coverage check needs both)."""
    predictor = model if isinstance(model, Predictor) else Predictor.load(model)
    predictor.scaler_for(instrument)  # an instrument the bundle has no scaling for fails before any work
    frames = [frames] if isinstance(frames, pl.DataFrame) else list(frames)
    if not frames:
        raise ValueError("no frames to predict on")
    rows = _rows(frames, predictor.n_levels)
    # every minute counts as labelled, so the windows are exactly training's over valid minutes
    targets = np.full(rows.valid.size, ANY_CLASS, dtype=np.int8)
    ends = WindowIndex.build(rows.valid, targets, predictor.seq_len, rows.minutes).ends
    probabilities = predictor.probabilities(rows.features, ends, batch_size, instrument)
    return _table(rows.ts, ends, probabilities, predictor.class_names), rows.valid
