"""Labels for the one-minute books: forward return over `lookahead` minutes, cut into SELL / NEUTRAL / BUY.

Pure polars (DuckDB only inside `labelled_distribution`); no Dagster. The asset layer calls:

- `label_suffix(...)`            the folder name that keeps runs with other settings apart
- `label_day(day, next_day, ...)` the labelled frame of one day, its tail read from the next day
- `label_day_files(...)`         the same from and to Parquet files, written atomically
- `class_distribution`, `combine_distributions`, `class_balance_problems`,
  `config_line`, `distribution_line`, `labelled_distribution`   for logs and the balance check.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from .storage import write_parquet_atomic

__all__ = [
    "BUY",
    "CLASS_NAMES",
    "CLASS_SHORT_NAMES",
    "NEUTRAL",
    "SELL",
    "THRESHOLD_TOLERANCE",
    "class_balance_problems",
    "class_distribution",
    "combine_distributions",
    "config_line",
    "day_class_counts_sql",
    "distribution_from_rows",
    "distribution_line",
    "label_day",
    "label_day_files",
    "label_suffix",
    "labelled_day_counts",
    "labelled_day_path",
    "labelled_distribution",
    "month_table",
    "preprocessed_day_path",
]

SELL, NEUTRAL, BUY = 0, 1, 2
CLASS_NAMES = ("SELL", "NEUTRAL", "BUY")
CLASS_SHORT_NAMES = ("SELL", "NEU", "BUY")

DEFAULT_LOOKAHEAD = 60
DEFAULT_THRESHOLD_SHORT = -0.004
DEFAULT_THRESHOLD_LONG = 0.008
DEFAULT_PRICE_COLUMN = "micro_price"

# p[t+H] / p[t] - 1 carries a rounding error of a few 1e-16: a move of exactly -0.4 % may come out as
# -0.0039999999999999 and be called NEUTRAL. A tolerance far below one price tick (~1e-6 of BTC)
# makes "equal to the threshold" mean what a person means by it.
THRESHOLD_TOLERANCE = 1e-12


def _validate_settings(lookahead: int, threshold_short: float, threshold_long: float) -> None:
    if int(lookahead) != lookahead or lookahead < 1:
        raise ValueError(f"lookahead must be a whole number of minutes >= 1, got {lookahead!r}")
    if not (np.isfinite(threshold_short) and np.isfinite(threshold_long)):
        raise ValueError(f"thresholds must be finite, got {threshold_short!r}, {threshold_long!r}")
    if not threshold_short <= 0 <= threshold_long or threshold_short >= threshold_long:
        raise ValueError(
            "need threshold_short <= 0 <= threshold_long and threshold_short < threshold_long, "
            f"got short={threshold_short!r}, long={threshold_long!r}"
        )


def _threshold_digits(threshold: float) -> str:
    text = f"{round(abs(threshold), 8):.8f}".rstrip("0")
    whole, _, decimals = text.partition(".")
    return whole + decimals.ljust(3, "0")


def _horizon_name(lookahead: int) -> str:
    return f"{lookahead // 60}h" if lookahead % 60 == 0 else f"{lookahead}m"


def label_suffix(
    lookahead: int = DEFAULT_LOOKAHEAD,
    threshold_short: float = DEFAULT_THRESHOLD_SHORT,
    threshold_long: float = DEFAULT_THRESHOLD_LONG,
) -> str:
    """`SELL_0004_BUY_0008_1h` for (60, -0.004, 0.008); 30 -> `30m`, 90 -> `90m`, 120 -> `2h`.

    Thresholds are written as their decimal digits without the point, at least three decimals
    (0.004 -> `0004`, 0.01 -> `0010`, 0.0125 -> `00125`).
    """
    _validate_settings(lookahead, threshold_short, threshold_long)
    return (
        f"SELL_{_threshold_digits(threshold_short)}_BUY_{_threshold_digits(threshold_long)}"
        f"_{_horizon_name(int(lookahead))}"
    )


def _price_frame(frame: pl.DataFrame, price_column: str, name: str) -> pl.DataFrame:
    if "ts" not in frame.columns or price_column not in frame.columns:
        raise ValueError(f"{name} needs columns 'ts' and {price_column!r}; it has {frame.columns[:6]}...")
    return frame.select(pl.col("ts"), pl.col(price_column).cast(pl.Float64).alias("_price"))


def label_day(
    day_frame: pl.DataFrame,
    next_day_frame: pl.DataFrame | None = None,
    lookahead: int = DEFAULT_LOOKAHEAD,
    threshold_short: float = DEFAULT_THRESHOLD_SHORT,
    threshold_long: float = DEFAULT_THRESHOLD_LONG,
    price_column: str = DEFAULT_PRICE_COLUMN,
) -> pl.DataFrame:
    """The day's rows with `fwd_return` (Float64) and `target` (Int8: 0 SELL, 1 NEUTRAL, 2 BUY).

    `fwd_return[t] = p[t+H] / p[t] - 1`, H = `lookahead` minutes, matched by timestamp (not row
    position), so a gap in the data gives null rather than a return over a wrong horizon.
    `target` is null where p[t] or p[t+H] is missing, not positive, or beyond the data; the day's
    last H minutes are labelled from `next_day_frame` (only its `ts` and price column are read) and
    stay null without it. SELL when fwd_return <= threshold_short, BUY when >= threshold_long, both
    within `THRESHOLD_TOLERANCE`.
    """
    _validate_settings(lookahead, threshold_short, threshold_long)
    day_frame = day_frame.drop([c for c in ("fwd_return", "target") if c in day_frame.columns])
    prices = _price_frame(day_frame, price_column, "day_frame")
    if next_day_frame is not None and next_day_frame.height:
        following = _price_frame(next_day_frame, price_column, "next_day_frame")
        first_next, last_day = following["ts"].min(), prices["ts"].max()
        if day_frame.height and first_next <= last_day:  # type: ignore[operator]  # polars types min/max as any literal; both are datetimes
            raise ValueError(f"next_day_frame starts at {first_next!s}, not after the day's last minute {last_day!s}")
        prices = pl.concat([prices, following.cast(prices.schema)])
    if prices["ts"].is_duplicated().any():
        raise ValueError("duplicate timestamps in the frames to label")

    usable = pl.col("_price").is_finite() & (pl.col("_price") > 0)
    prices = prices.with_columns(pl.when(usable).then(pl.col("_price")).alias("_price"))
    future = prices.select(
        (pl.col("ts") - pl.duration(minutes=int(lookahead))).alias("ts"),
        pl.col("_price").alias("_future"),
    )
    now = prices.head(day_frame.height).join(future, on="ts", how="left", maintain_order="left")
    fwd_return = (now["_future"] / now["_price"] - 1.0).rename("fwd_return")
    fwd = pl.col("fwd_return")
    target = (
        pl.when(fwd.is_null())
        .then(None)
        .when(fwd <= threshold_short + THRESHOLD_TOLERANCE)
        .then(SELL)
        .when(fwd >= threshold_long - THRESHOLD_TOLERANCE)
        .then(BUY)
        .otherwise(NEUTRAL)
        .cast(pl.Int8)
        .alias("target")
    )
    return day_frame.with_columns(fwd_return.cast(pl.Float64)).with_columns(target)


# ---------------------------------------------------------------------------------------------
# Files


def as_date(day: dt.date | str) -> dt.date:
    """A date from a date, a datetime or an ISO string."""
    if isinstance(day, dt.datetime):
        return day.date()
    if isinstance(day, dt.date):
        return day
    return dt.date.fromisoformat(str(day))


def preprocessed_day_path(pre_dir: str | Path, day: dt.date | str) -> Path:
    return Path(pre_dir) / f"{as_date(day).isoformat()}.parquet"


def labelled_day_path(out_dir: str | Path, suffix: str, day: dt.date | str) -> Path:
    return Path(out_dir) / suffix / f"{as_date(day).isoformat()}.parquet"


def label_day_files(
    pre_dir: str | Path,
    out_dir: str | Path,
    day: dt.date | str,
    lookahead: int = DEFAULT_LOOKAHEAD,
    threshold_short: float = DEFAULT_THRESHOLD_SHORT,
    threshold_long: float = DEFAULT_THRESHOLD_LONG,
    price_column: str = DEFAULT_PRICE_COLUMN,
    output: Path | None = None,
) -> Path:
    """Labels `{pre_dir}/{day}.parquet` into `{out_dir}/{suffix}/{day}.parquet` (or `output`), atomically.

    The tail is labelled from `{pre_dir}/{day+1}.parquet` when it exists; running again after
    D+1 arrives fills it. The Parquet metadata says whether the next day was there
    (`quantgod.label.next_day` = `present` / `absent`).
    """
    day = as_date(day)
    suffix = label_suffix(lookahead, threshold_short, threshold_long)
    source = preprocessed_day_path(pre_dir, day)
    if not source.exists():
        raise FileNotFoundError(f"no preprocessed book for {day}: {source}")
    frame = pl.read_parquet(source)
    next_source = preprocessed_day_path(pre_dir, day + dt.timedelta(days=1))
    next_frame = None
    if next_source.exists():
        horizon_end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC) + dt.timedelta(
            minutes=int(lookahead)
        )
        next_frame = (
            pl.scan_parquet(next_source)
            .select("ts", price_column)
            .filter(pl.col("ts") <= pl.lit(horizon_end).cast(pl.Datetime("ms", "UTC")))
            .collect()
        )
    labelled = label_day(frame, next_frame, lookahead, threshold_short, threshold_long, price_column)
    output = output or labelled_day_path(out_dir, suffix, day)
    write_parquet_atomic(
        labelled,
        output,
        {
            "quantgod.date": day.isoformat(),
            "quantgod.label.lookahead": str(int(lookahead)),
            "quantgod.label.threshold_short": repr(float(threshold_short)),
            "quantgod.label.threshold_long": repr(float(threshold_long)),
            "quantgod.label.price_column": price_column,
            "quantgod.label.next_day": "present" if next_frame is not None else "absent",
        },
    )
    return output


# ---------------------------------------------------------------------------------------------
# Distributions, for logs and the class-balance check


def _target_array(targets: Any) -> np.ndarray:
    if isinstance(targets, pl.DataFrame):
        targets = targets["target"]
    if isinstance(targets, pl.Series):
        return targets.cast(pl.Float64).to_numpy()  # nulls become NaN
    return np.asarray(targets, dtype=np.float64)


def _distribution_from_counts(counts: Sequence[int], unlabelled: int) -> dict[str, Any]:
    labelled = int(sum(counts))
    return {
        "counts": {name: int(c) for name, c in zip(CLASS_NAMES, counts)},
        "shares": {name: (int(c) / labelled if labelled else 0.0) for name, c in zip(CLASS_NAMES, counts)},
        "labelled": labelled,
        "unlabelled": int(unlabelled),
    }


def class_distribution(targets: Any) -> dict[str, Any]:
    """Counts and shares (of labelled rows) per class.

    `targets`: a polars Series / frame with `target`, or array-like where null, NaN or a negative
    value means unlabelled. Returns
    `{"counts": {"SELL": n, "NEUTRAL": n, "BUY": n}, "shares": {...}, "labelled": n, "unlabelled": n}`.
    """
    values = _target_array(targets)
    labelled = values[np.isfinite(values) & (values >= 0)]
    unknown = set(np.unique(labelled)) - {SELL, NEUTRAL, BUY}
    if unknown:
        raise ValueError(f"targets hold values other than 0, 1, 2: {sorted(unknown)[:5]}")
    counts = np.bincount(labelled.astype(np.int64), minlength=3)
    return _distribution_from_counts(counts.tolist(), values.size - labelled.size)


def combine_distributions(distributions: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The distribution over several days, from their `class_distribution`s."""
    counts = [0, 0, 0]
    unlabelled = 0
    for dist in distributions:
        for i, name in enumerate(CLASS_NAMES):
            counts[i] += int(dist["counts"][name])
        unlabelled += int(dist.get("unlabelled", 0))
    return _distribution_from_counts(counts, unlabelled)


def distribution_line(name: str, dist: Mapping[str, Any]) -> str:
    """`2025-03-14.parquet → SELL: 12.3% | NEU: 74.1% | BUY: 13.6%`.

    `distribution_line("FINAL DISTRIBUTION", combine_distributions(days))` gives the closing line.
    """
    parts = [f"{short}: {100 * dist['shares'][long]:.1f}%" for short, long in zip(CLASS_SHORT_NAMES, CLASS_NAMES)]
    return f"{name} → " + " | ".join(parts)


def config_line(
    lookahead: int = DEFAULT_LOOKAHEAD,
    threshold_short: float = DEFAULT_THRESHOLD_SHORT,
    threshold_long: float = DEFAULT_THRESHOLD_LONG,
) -> str:
    """`Config: lookahead=60, short=-0.004, long=0.008`."""
    return f"Config: lookahead={int(lookahead)}, short={threshold_short!r}, long={threshold_long!r}"


def class_balance_problems(
    dist: Mapping[str, Any], min_share: float = 0.02
) -> tuple[list[str], list[str]]:
    """(missing classes, rare classes) of one day's `class_distribution`.

    Missing (count 0) fails the blocking check; rare (present but under `min_share` of the labelled
    rows) is a warning. A day with no labelled rows misses every class.
    """
    missing = [name for name in CLASS_NAMES if dist["counts"][name] == 0]
    rare = [
        name
        for name in CLASS_NAMES
        if dist["counts"][name] > 0 and dist["shares"][name] < min_share
    ]
    return missing, rare


def day_class_counts_sql(parquet_glob: str) -> str:
    """DuckDB SQL giving (day, target, count) rows over labelled day files (target null: unlabelled)."""
    escaped = parquet_glob.replace("'", "''")
    return (
        "SELECT regexp_extract(filename, '(\\d{4}-\\d{2}-\\d{2})\\.parquet$', 1) AS day, "
        "target, count(*) AS n "
        f"FROM read_parquet('{escaped}', filename = true, union_by_name = true) GROUP BY 1, 2"
    )


def distribution_from_rows(rows: Iterable[tuple[Any, int]]) -> dict[str, Any]:
    """The distribution from (target, count) rows, a null target counting as unlabelled."""
    counts = [0, 0, 0]
    unlabelled = 0
    for target, count in rows:
        if target is None:
            unlabelled += int(count)
        else:
            counts[int(target)] += int(count)
    return _distribution_from_counts(counts, unlabelled)


def month_table(rows: Sequence[tuple[str, Any, int]]) -> tuple[str, dict[str, dict[str, Any]]]:
    """A markdown table of the class distribution per month, from (day, target, count) rows."""
    months: dict[str, dict[str, Any]] = {}
    for day, target, count in rows:
        month = months.setdefault(day[:7], {"days": set(), "rows": []})
        month["days"].add(day)
        month["rows"].append((target, count))
    out: dict[str, dict[str, Any]] = {}
    lines = ["| month | days | labelled | SELL | NEUTRAL | BUY | unlabelled |", "|---|---|---|---|---|---|---|"]
    for key in sorted(months):
        dist = distribution_from_rows(months[key]["rows"])
        cells = [f"{dist['counts'][n]} ({100 * dist['shares'][n]:.1f}%)" for n in CLASS_NAMES]
        lines.append(f"| {key} | {len(months[key]['days'])} | {dist['labelled']} | {' | '.join(cells)} | "
                     f"{dist['unlabelled']} |")
        out[key] = {"days": len(months[key]["days"]), "labelled": dist["labelled"], "counts": dist["counts"],
                    "shares": {n: round(s, 6) for n, s in dist["shares"].items()}, "unlabelled": dist["unlabelled"]}
    return "\n".join(lines), out


def labelled_day_counts(labelled_dir: str | Path, connection: Any = None) -> list[tuple[str, Any, int]]:
    """(day, target, count) rows over every `*.parquet` in one suffix folder (none: []), by a DuckDB
    query on `connection` (the Dagster resource's), else on an in-memory database of its own."""
    import duckdb

    folder = Path(labelled_dir)
    if not any(folder.glob("*.parquet")):
        return []
    sql = day_class_counts_sql((folder / "*.parquet").as_posix())
    if connection is not None:
        return connection.execute(sql).fetchall()
    with duckdb.connect() as own:
        return own.execute(sql).fetchall()


def labelled_distribution(labelled_dir: str | Path) -> dict[str, Any]:
    """The class distribution over every `*.parquet` in one suffix folder."""
    return distribution_from_rows((target, count) for _, target, count in labelled_day_counts(labelled_dir))
