"""Per-minute model features from the labelled book rows: float32, causal, with a validity mask.

Row t's features use row t and, for the mid return, row t-1 only; nothing after t.

Per level i < n_levels (level-major, like the book columns):
  `bid_px_bps_i`, `bid_sz_log_i`, `ask_px_bps_i`, `ask_sz_log_i`
  prices as distance from the mid in basis points, sizes as log1p.
Then: `mid_logret_bps` (log return of the mid since the previous minute, bps), `spread_bps`,
`micro_bps` (micro-price minus mid, bps), `imbalance_1/5/20/200`.

The mid is (bid_px_0 + ask_px_0) / 2 of the same close sample as the levels, so the distances
are exact; a row is valid when every feature is finite. The mid return needs the previous minute:
it is NaN (the row invalid) at the start of the data, after a gap in time, or after an invalid row.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

__all__ = [
    "FEATURE_CODE_HASH",
    "MAX_LEVELS",
    "MIN_LEVELS",
    "FeatureBlock",
    "book_mid",
    "feature_names",
    "frame_features",
    "n_features",
    "required_columns",
]

MIN_LEVELS = 1  # the settings restrict to 10 ... 200; tests use fewer
MAX_LEVELS = 200
MINUTE_MS = 60_000
BPS = 1e4
LEVEL_FEATURES = ("bid_px_bps", "bid_sz_log", "ask_px_bps", "ask_sz_log")
ROW_FEATURES = (
    "mid_logret_bps",
    "spread_bps",
    "micro_bps",
    "imbalance_1",
    "imbalance_5",
    "imbalance_20",
    "imbalance_200",
)
IMBALANCE_COLUMNS = ("imbalance_1", "imbalance_5", "imbalance_20", "imbalance_200")
# this module's source, hashed: studies, best params and models name the feature code they were made
# with, so a change to the features never silently reuses params searched (or a model trained) before it
FEATURE_CODE_HASH = hashlib.sha256(Path(__file__).read_bytes().replace(b"\r\n", b"\n")).hexdigest()[:12]


def _check_levels(n_levels: int) -> int:
    if not MIN_LEVELS <= int(n_levels) <= MAX_LEVELS:
        raise ValueError(f"n_levels must be in {MIN_LEVELS}..{MAX_LEVELS}, got {n_levels}")
    return int(n_levels)


def feature_names(n_levels: int) -> list[str]:
    n_levels = _check_levels(n_levels)
    names = [f"{name}_{i}" for i in range(n_levels) for name in LEVEL_FEATURES]
    return names + list(ROW_FEATURES)


def n_features(n_levels: int) -> int:
    return 4 * _check_levels(n_levels) + len(ROW_FEATURES)


def required_columns(n_levels: int) -> list[str]:
    """The book columns `frame_features` reads (plus nothing else)."""
    n_levels = _check_levels(n_levels)
    levels = [f"{f}_{i}" for i in range(n_levels) for f in ("bid_px", "bid_sz", "ask_px", "ask_sz")]
    return ["ts", *levels, "spread", "micro_price", *IMBALANCE_COLUMNS]


@dataclass
class FeatureBlock:
    values: np.ndarray  # float32 [N, F]; NaN where an input is missing
    names: list[str]
    valid: np.ndarray  # bool [N]: every feature finite
    last_ts_ms: int | None  # the last row's time and mid: pass as `previous` to the next block
    last_mid: float


def _column(frame: pl.DataFrame, name: str) -> np.ndarray:
    return frame.get_column(name).cast(pl.Float64).to_numpy()  # null -> NaN


def _ts_ms(frame: pl.DataFrame) -> np.ndarray:
    return frame.get_column("ts").dt.epoch("ms").to_numpy().astype(np.int64)


def book_mid(frame: pl.DataFrame) -> np.ndarray:
    """(bid_px_0 + ask_px_0) / 2, NaN where the book is missing or not positive."""
    mid = (_column(frame, "bid_px_0") + _column(frame, "ask_px_0")) / 2
    mid[~(mid > 0)] = np.nan
    return mid


def frame_features(
    frame: pl.DataFrame,
    n_levels: int,
    *,
    out: np.ndarray | None = None,
    previous: tuple[int | None, float] | None = None,
) -> FeatureBlock:
    """Features of every row of `frame` (time-ordered one-minute rows).

    `out`: a float32 [len(frame), F] array to fill (a slice of a bigger matrix), so that building
    a year never holds more than one day's temporaries. `previous`: (ts in ms, mid) of the row just
    before `frame`, as returned in the previous block's `last_ts_ms` / `last_mid`; it gives the
    first row its mid return.
    """
    n_levels = _check_levels(n_levels)
    n = frame.height
    width = n_features(n_levels)
    if out is None:
        out = np.empty((n, width), dtype=np.float32)
    elif out.shape != (n, width) or out.dtype != np.float32:
        raise ValueError(f"out must be float32 {(n, width)}, got {out.dtype} {out.shape}")

    ts = _ts_ms(frame)
    mid = book_mid(frame)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        for i in range(n_levels):
            base = 4 * i
            out[:, base] = (_column(frame, f"bid_px_{i}") - mid) / mid * BPS
            out[:, base + 1] = np.log1p(_column(frame, f"bid_sz_{i}"))
            out[:, base + 2] = (_column(frame, f"ask_px_{i}") - mid) / mid * BPS
            out[:, base + 3] = np.log1p(_column(frame, f"ask_sz_{i}"))

        prev_mid = np.full(n, np.nan)
        if n:
            prev_mid[1:] = mid[:-1]
            prev_mid[1:][np.diff(ts) != MINUTE_MS] = np.nan
            if previous is not None and previous[0] is not None and ts[0] - previous[0] == MINUTE_MS:
                prev_mid[0] = previous[1]
        col = 4 * n_levels
        out[:, col] = np.log(mid / prev_mid) * BPS
        out[:, col + 1] = _column(frame, "spread") / mid * BPS
        out[:, col + 2] = (_column(frame, "micro_price") - mid) / mid * BPS
        for k, name in enumerate(IMBALANCE_COLUMNS):
            out[:, col + 3 + k] = _column(frame, name)

    valid = np.ones(n, dtype=bool)
    for start in range(0, n, 4096):  # row chunks: no [N, F] boolean temporary
        chunk = out[start : start + 4096]
        valid[start : start + 4096] = np.isfinite(chunk).all(axis=1)
    return FeatureBlock(
        values=out,
        names=feature_names(n_levels),
        valid=valid,
        last_ts_ms=int(ts[-1]) if n else (previous[0] if previous else None),
        last_mid=float(mid[-1]) if n else (previous[1] if previous else float("nan")),
    )
