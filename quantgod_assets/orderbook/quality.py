"""Quality checks of one preprocessed day (the 1440-row frame), as plain data.

Each check returns a `CheckOutcome` that says whether it passed, how bad a failure is (`ERROR` or
`WARN`) and what a person needs to see (counts, the first bad minutes, gap intervals). The Dagster
layer (`assets/reporting.py`) turns outcomes into check results; nothing here imports dagster.

- `no_nan_or_inf`: null means "no book at that minute" and is allowed; NaN and ±Inf never are.
- `schema`: the exact 200-level column set, order and types, and 1440 rows.
- `gaps`: the share of invalid seconds; WARN above `warn_share`, ERROR above `fail_share`.
- `not_crossed`: no minute closes with best bid >= best ask (spread <= 0).
- `snapshot_agreement`: the replayed book agreed with every full snapshot Bybit sent mid-file or
  at the end (the replay compares them: `SnapshotAgreement`); WARN on any disagreement, naming
  the first one. Its figures come from the replay, or from the Parquet's `quantgod.snapshots.*`
  metadata for a file checked on its own.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from .schema import MINUTES_PER_DAY, SECONDS_PER_DAY, book_schema

__all__ = [
    "CHECK_NAMES",
    "CheckOutcome",
    "SnapshotAgreement",
    "SnapshotDisagreement",
    "check_gaps",
    "check_no_nan_or_inf",
    "check_not_crossed",
    "check_schema",
    "check_snapshot_agreement",
    "markdown_table",
    "minute_gap_intervals",
    "run_checks",
]

ERROR, WARN = "ERROR", "WARN"
CHECK_NAMES = ("no_nan_or_inf", "schema", "gaps", "not_crossed", "snapshot_agreement")
FIRST_BAD = 10  # bad minutes listed in the metadata


@dataclass
class CheckOutcome:
    name: str
    passed: bool
    severity: str  # ERROR or WARN: how bad it is when not passed
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)  # plain values: int, float, str, list
    details_md: str | None = None  # a markdown table of the first bad rows

    @property
    def failed_error(self) -> bool:
        return not self.passed and self.severity == ERROR


SNAPSHOT_KEYS = ("compared", "agreeing", "disagreeing", "after_repair")  # quantgod.snapshots.<key>
SNAPSHOT_FIRST_KEY = "quantgod.snapshots.first_disagreement"


@dataclass(frozen=True)
class SnapshotDisagreement:
    """The first level where the replayed book differed from a Bybit snapshot."""

    ts_ms: int  # the snapshot's ts
    side: str  # "bid" or "ask"
    level: int  # 0 = best
    ours_price: float | None  # None: our side holds fewer levels than the snapshot
    ours_size: float | None
    bybit_price: float
    bybit_size: float
    repair_since_previous_snapshot: bool  # a crossed-book repair removed levels since the last snapshot

    def as_dict(self) -> dict[str, Any]:
        return {
            "ts_ms": self.ts_ms, "time": self.time_text(), "side": self.side, "level": self.level,
            "ours_price": self.ours_price, "ours_size": self.ours_size,
            "bybit_price": self.bybit_price, "bybit_size": self.bybit_size,
            "repair_since_previous_snapshot": self.repair_since_previous_snapshot,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SnapshotDisagreement:
        def number(key: str) -> float | None:
            value = values.get(key)
            return None if value is None else float(value)

        return cls(
            ts_ms=int(values["ts_ms"]), side=str(values["side"]), level=int(values["level"]),
            ours_price=number("ours_price"), ours_size=number("ours_size"),
            bybit_price=float(values["bybit_price"]), bybit_size=float(values["bybit_size"]),
            repair_since_previous_snapshot=bool(values["repair_since_previous_snapshot"]),
        )

    def time_text(self) -> str:
        """`2025-03-14 06:00:00.123 UTC`"""
        try:
            moment = dt.datetime.fromtimestamp(self.ts_ms / 1000, dt.UTC)
        except (OverflowError, ValueError, OSError):
            return f"ts {self.ts_ms}"
        return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{self.ts_ms % 1000:03d} UTC"

    def text(self) -> str:
        """`bid level 3 at 2025-03-14 18:00:00.012 UTC: ours 84325.1 x 0.5, Bybit's 84325.1 x 0.7`"""
        ours = "none" if self.ours_price is None else f"{self.ours_price!r} x {self.ours_size!r}"
        return (f"{self.side} level {self.level} at {self.time_text()}: ours {ours}, "
                f"Bybit's {self.bybit_price!r} x {self.bybit_size!r}")


@dataclass(frozen=True)
class SnapshotAgreement:
    """How the replayed book compared with Bybit's snapshots (see `_kernel._compare_snapshot`).

    A snapshot is compared when it meets a valid book: not the day's first; the next day's
    opening snapshot at the file's end is, unless a delta of the next day preceded it.
    `after_repair`: compared snapshots with a crossed-book repair since the previous snapshot.
    """

    compared: int
    agreeing: int
    disagreeing: int
    after_repair: int = 0
    first_disagreement: SnapshotDisagreement | None = None

    @classmethod
    def from_counts(cls, counts: Mapping[str, int], first: SnapshotDisagreement | None) -> SnapshotAgreement:
        values = [int(counts.get(f"snapshots_{key}", 0)) for key in SNAPSHOT_KEYS]
        return cls(values[0], values[1], values[2], values[3], first)

    def parquet_metadata(self) -> dict[str, str]:
        """The `quantgod.snapshots.*` key-value metadata of the day's Parquet file."""
        out = {f"quantgod.snapshots.{key}": str(getattr(self, key)) for key in SNAPSHOT_KEYS}
        first = self.first_disagreement
        out[SNAPSHOT_FIRST_KEY] = json.dumps(None if first is None else first.as_dict())
        return out

    @classmethod
    def from_parquet_metadata(cls, metadata: Mapping[str, str] | Mapping[bytes, bytes]) -> SnapshotAgreement | None:
        """The figures back from a Parquet's key-value metadata; None for a file written without them."""
        text = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                for k, v in metadata.items()}
        if any(f"quantgod.snapshots.{key}" not in text for key in SNAPSHOT_KEYS):
            return None
        first = json.loads(text.get(SNAPSHOT_FIRST_KEY) or "null")
        values = [int(text[f"quantgod.snapshots.{key}"]) for key in SNAPSHOT_KEYS]
        return cls(values[0], values[1], values[2], values[3],
                   None if first is None else SnapshotDisagreement.from_dict(first))

    def summary(self) -> dict[str, Any]:
        """Plain values for metadata: the counts and the first disagreement (or None)."""
        first = self.first_disagreement
        return {
            "snapshots_compared": self.compared,
            "snapshots_agreeing": self.agreeing,
            "snapshots_disagreeing": self.disagreeing,
            "snapshots_after_repair": self.after_repair,
            "first_disagreement": None if first is None else first.as_dict(),
        }


def markdown_table(frame: pl.DataFrame, float_digits: int = 6) -> str:
    """A small markdown table (for metadata previews); floats rounded, nulls shown as `null`."""

    def cell(value: Any) -> str:
        if value is None:
            return "null"
        if isinstance(value, float):
            return repr(value) if not math.isfinite(value) else f"{value:.{float_digits}g}"
        return str(value)

    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.iter_rows()]
    return "\n".join([header, rule, *rows])


def _minute_labels(frame: pl.DataFrame, mask: pl.Series) -> list[str]:
    if "ts" in frame.columns and frame.schema["ts"].is_temporal():
        return [t.strftime("%H:%M") for t in frame.filter(mask)["ts"].head(FIRST_BAD)]
    return [str(i) for i in np.flatnonzero(mask.to_numpy())[:FIRST_BAD]]


def check_no_nan_or_inf(frame: pl.DataFrame) -> CheckOutcome:
    floats = [name for name, dtype in frame.schema.items() if dtype.is_float()]
    if not floats:
        return CheckOutcome("no_nan_or_inf", True, ERROR, "no float columns to check", {"nan": 0, "inf": 0})
    counts = frame.select(
        *[pl.col(c).is_nan().sum().alias(f"nan:{c}") for c in floats],
        *[pl.col(c).is_infinite().sum().alias(f"inf:{c}") for c in floats],
    ).row(0, named=True)
    nan = {k[4:]: int(v) for k, v in counts.items() if k.startswith("nan:") and v}
    inf = {k[4:]: int(v) for k, v in counts.items() if k.startswith("inf:") and v}
    n_nan, n_inf = sum(nan.values()), sum(inf.values())
    metadata: dict[str, Any] = {"nan": n_nan, "inf": n_inf, "columns_checked": len(floats)}
    if not n_nan and not n_inf:
        return CheckOutcome("no_nan_or_inf", True, ERROR, "no NaN or Inf (nulls are allowed)", metadata)
    bad_columns = sorted(set(nan) | set(inf), key=lambda c: -(nan.get(c, 0) + inf.get(c, 0)))
    metadata["bad_columns"] = {c: {"nan": nan.get(c, 0), "inf": inf.get(c, 0)} for c in bad_columns[:20]}
    bad_rows = pl.any_horizontal([pl.col(c).is_nan() | pl.col(c).is_infinite() for c in bad_columns])
    mask = frame.select(bad_rows.fill_null(False)).to_series()
    metadata["first_bad_minutes"] = _minute_labels(frame, mask)
    shown = [c for c in ("ts",) if c in frame.columns] + bad_columns[:5]
    details = markdown_table(frame.filter(mask).select(shown).head(FIRST_BAD))
    return CheckOutcome(
        "no_nan_or_inf",
        False,
        ERROR,
        f"NaN/Inf found: {n_nan} NaN and {n_inf} Inf values in {len(bad_columns)} column(s), "
        f"first: {', '.join(bad_columns[:3])}",
        metadata,
        details,
    )


def check_schema(frame: pl.DataFrame | pl.Schema, rows: int | None = None) -> CheckOutcome:
    schema = frame if isinstance(frame, pl.Schema) else frame.schema
    if rows is None and isinstance(frame, pl.DataFrame):
        rows = frame.height
    expected = book_schema()
    want, have = list(expected.names()), list(schema.names())
    problems: list[str] = []
    metadata: dict[str, Any] = {"columns": len(have), "expected_columns": len(want)}
    missing = [c for c in want if c not in schema]
    unexpected = [c for c in have if c not in expected]
    if missing:
        problems.append(f"{len(missing)} column(s) missing (first: {', '.join(missing[:5])})")
        metadata["missing"] = missing[:50]
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected column(s) ({', '.join(unexpected[:5])})")
        metadata["unexpected"] = unexpected[:50]
    if not missing and not unexpected and have != want:
        position = next(i for i, (a, b) in enumerate(zip(have, want)) if a != b)
        problems.append(
            f"columns out of order from position {position}: {have[position]!r} where {want[position]!r} belongs"
        )
        metadata["first_out_of_order"] = position
    wrong_types = {c: f"{schema[c]} (expected {expected[c]})" for c in want if c in schema and schema[c] != expected[c]}
    if wrong_types:
        first, first_type = next(iter(wrong_types.items()))
        problems.append(f"{len(wrong_types)} column(s) of the wrong type (first: {first}: {first_type})")
        metadata["wrong_types"] = dict(list(wrong_types.items())[:20])
    if rows is not None:
        metadata["rows"] = rows
        if rows != MINUTES_PER_DAY:
            problems.append(f"{rows} rows, expected {MINUTES_PER_DAY}")
    if problems:
        return CheckOutcome("schema", False, ERROR, "; ".join(problems), metadata)
    return CheckOutcome("schema", True, ERROR, f"{len(want)} columns in order, {MINUTES_PER_DAY} rows", metadata)


def minute_gap_intervals(valid_seconds: Sequence[int] | np.ndarray, min_minutes: int = 1) -> list[tuple[str, str]]:
    """Runs of minutes with no valid second, as ("HH:MM:SS", "HH:MM:SS") end-exclusive.

    Used when the engine's per-second intervals are not at hand (a file checked on its own).
    """
    empty = np.concatenate([[False], np.asarray(valid_seconds) == 0, [False]])
    edges = np.flatnonzero(np.diff(empty.astype(np.int8)))
    starts, stops = edges[::2], edges[1::2]
    return [(f"{a // 60:02d}:{a % 60:02d}:00", f"{b // 60:02d}:{b % 60:02d}:00")
            for a, b in zip(starts, stops) if b - a >= min_minutes]


def check_gaps(
    frame: pl.DataFrame,
    warn_share: float = 0.01,
    fail_share: float = 0.10,
    intervals: Sequence[tuple[str, str]] | None = None,
) -> CheckOutcome:
    if "valid_seconds" not in frame.columns:
        return CheckOutcome("gaps", False, ERROR, "no valid_seconds column: cannot measure gaps")
    valid = int(frame["valid_seconds"].fill_null(0).cast(pl.Int64).sum())
    invalid_share = 1.0 - valid / SECONDS_PER_DAY
    if intervals is None:
        intervals = minute_gap_intervals(frame["valid_seconds"].fill_null(0).to_numpy())
    intervals = [(str(start), str(end)) for start, end in intervals]
    metadata: dict[str, Any] = {
        "invalid_share": round(invalid_share, 6),
        "invalid_seconds": SECONDS_PER_DAY - valid,
        "warn_share": warn_share,
        "fail_share": fail_share,
        "gap_intervals": [f"{a}-{b}" for a, b in intervals[:100]],
        "gap_count": len(intervals),
    }
    details: str | None = None
    if intervals:
        shown = intervals[:20]
        details = markdown_table(pl.DataFrame({"start": [a for a, _ in shown], "end": [b for _, b in shown]}))
    text = f"{invalid_share:.2%} of seconds invalid in {len(intervals)} gap(s) of 60 s or more"
    if invalid_share > fail_share:
        return CheckOutcome("gaps", False, ERROR, f"{text}: above the {fail_share:.0%} limit", metadata, details)
    if invalid_share > warn_share:
        return CheckOutcome("gaps", False, WARN, f"{text}: above {warn_share:.0%}", metadata, details)
    return CheckOutcome("gaps", True, WARN, text, metadata, details)


def check_not_crossed(frame: pl.DataFrame) -> CheckOutcome:
    needed = {"spread", "bid_px_0", "ask_px_0"}
    if not needed <= set(frame.columns):
        return CheckOutcome("not_crossed", False, ERROR, f"missing column(s) {sorted(needed - set(frame.columns))}")
    crossed = ((pl.col("spread") <= 0) | (pl.col("bid_px_0") >= pl.col("ask_px_0"))).fill_null(False)
    mask = frame.select(crossed).to_series()
    n = int(mask.sum())
    metadata: dict[str, Any] = {"crossed_minutes": n}
    if n == 0:
        return CheckOutcome("not_crossed", True, ERROR, "no minute closes crossed (spread > 0 everywhere)", metadata)
    metadata["first_crossed_minutes"] = _minute_labels(frame, mask)
    shown = [c for c in ("ts", "bid_px_0", "ask_px_0", "spread") if c in frame.columns]
    return CheckOutcome(
        "not_crossed",
        False,
        ERROR,
        f"{n} minute(s) close crossed (best bid >= best ask), first at {metadata['first_crossed_minutes'][0]}",
        metadata,
        markdown_table(frame.filter(mask).select(shown).head(FIRST_BAD)),
    )


def check_snapshot_agreement(snapshots: SnapshotAgreement | None) -> CheckOutcome:
    """WARN when the replayed book differed from any Bybit snapshot it met; never blocking."""
    name = "snapshot_agreement"
    if snapshots is None:
        return CheckOutcome(name, True, WARN, "no snapshot comparison recorded for this day (a file written "
                                              "before the replay compared snapshots): nothing to check",
                            {"snapshots_compared": None})
    metadata = {k: v for k, v in snapshots.summary().items() if v is not None}
    if snapshots.compared == 0:
        return CheckOutcome(name, True, WARN, "no snapshot compared: the day holds none after its first "
                                              "(no mid-file restart, no next-day snapshot at the end)", metadata)
    first = snapshots.first_disagreement
    if snapshots.disagreeing == 0 or first is None:
        return CheckOutcome(name, True, WARN, f"the book agreed with all {snapshots.compared} snapshot(s) "
                                              "compared, level by level", metadata)
    repair = ("a crossed-book repair removed levels since the previous snapshot"
              if first.repair_since_previous_snapshot else "no crossed-book repair since the previous snapshot")
    details = markdown_table(pl.DataFrame({
        "time": [first.time_text()], "side": [first.side], "level": [first.level],
        "ours_price": [first.ours_price], "ours_size": [first.ours_size],
        "bybit_price": [first.bybit_price], "bybit_size": [first.bybit_size],
    }, schema={"time": pl.String, "side": pl.String, "level": pl.Int64, "ours_price": pl.Float64,
               "ours_size": pl.Float64, "bybit_price": pl.Float64, "bybit_size": pl.Float64}), float_digits=15)
    return CheckOutcome(
        name, False, WARN,
        f"the book disagreed with {snapshots.disagreeing} of {snapshots.compared} snapshot(s); first: "
        f"{first.text()} ({repair})",
        metadata,
        details,
    )


def run_checks(
    frame_or_path: pl.DataFrame | str | Path,
    *,
    warn_share: float = 0.01,
    fail_share: float = 0.10,
    intervals: Sequence[tuple[str, str]] | None = None,
    snapshots: SnapshotAgreement | None = None,
) -> list[CheckOutcome]:
    """All five checks, in `CHECK_NAMES` order.

    `snapshots`: the replay's snapshot comparison; for a path without it, read from the file's
    `quantgod.snapshots.*` metadata (absent in files written before it: the check then passes).
    """
    if isinstance(frame_or_path, pl.DataFrame):
        frame = frame_or_path
    else:
        frame = pl.read_parquet(frame_or_path)
        if snapshots is None:
            snapshots = SnapshotAgreement.from_parquet_metadata(pl.read_parquet_metadata(frame_or_path))
    return [
        check_no_nan_or_inf(frame),
        check_schema(frame),
        check_gaps(frame, warn_share, fail_share, intervals),
        check_not_crossed(frame),
        check_snapshot_agreement(snapshots),
    ]
