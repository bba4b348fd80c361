"""`preprocessed_book_days`' numbers: every instrument's preprocessed days by one DuckDB query each.

Plain code behind the Dagster asset (no dagster import): a read-only view over an instrument's
Parquet files, grouped by day, and whether every day between its first and last is there with
1440 rows. Instruments are never mixed: each is complete or not on its own.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..settings import Instrument, Settings
from .outcome import Markdown

__all__ = ["BookDaysSummary", "book_days_summary", "instrument_days"]

MINUTES = 1440


@dataclass
class InstrumentDays:
    """One instrument's days: the per-day table and what is missing or short."""

    instrument: Instrument
    frame: Any  # polars: day, rows, valid_share, crossed_minutes, mid_low, mid_high
    missing: list[dt.date] = field(default_factory=list)
    short: list[str] = field(default_factory=list)

    @property
    def days(self) -> int:
        return self.frame.height

    @property
    def complete(self) -> bool:
        return not self.missing and not self.short


@dataclass
class BookDaysSummary:
    per_instrument: list[InstrumentDays]

    @property
    def complete(self) -> bool:
        return all(i.complete for i in self.per_instrument)

    @property
    def verdict(self) -> str:
        if self.complete:
            return "all days present with 1440 rows for " + ", ".join(i.instrument.key for i in self.per_instrument)
        return "; ".join(f"{i.instrument.key}: {len(i.missing)} missing day(s), {len(i.short)} day(s) without "
                         "1440 rows" for i in self.per_instrument if not i.complete)

    @property
    def metadata(self) -> dict[str, Any]:
        from ..orderbook.quality import markdown_table

        out: dict[str, Any] = {"instruments": len(self.per_instrument), "by_instrument": Markdown(self._overview())}
        for item in self.per_instrument:
            key = item.instrument.key
            out[f"{key}_days"] = item.days
            out[f"{key}_first_day"] = str(item.frame["day"][0])
            out[f"{key}_last_day"] = str(item.frame["day"][-1])
            out[f"{key}_days_table"] = Markdown(markdown_table(item.frame.tail(31)))
        return out

    @property
    def check_metadata(self) -> dict[str, Any]:
        return {
            "missing_days": {i.instrument.key: [str(d) for d in i.missing[:100]] for i in self.per_instrument},
            "short_days": {i.instrument.key: i.short[:100] for i in self.per_instrument},
        }

    def _overview(self) -> str:
        lines = ["| instrument | days | first | last | mean valid share | missing | short |",
                 "|---|---:|---|---|---:|---:|---:|"]
        for i in self.per_instrument:
            share = float(i.frame["valid_share"].mean())
            lines.append(f"| {i.instrument.key} | {i.days} | {i.frame['day'][0]} | {i.frame['day'][-1]} | "
                         f"{share:.4f} | {len(i.missing)} | {len(i.short)} |")
        return "\n".join(lines)


def instrument_days(settings: Settings, instrument: Instrument, connection: Any) -> InstrumentDays | None:
    """One instrument's preprocessed days through DuckDB (None: it has none yet)."""
    import polars as pl

    folder = settings.for_instrument(instrument).paths.preprocessed_dir
    if not any(folder.glob("*.parquet")):
        return None
    pattern = (folder / "*.parquet").as_posix().replace("'", "''")
    cursor = connection.execute(
        f"""
        SELECT regexp_extract(filename, '(\\d{{4}}-\\d{{2}}-\\d{{2}})\\.parquet$', 1) AS day,
               count(*) AS rows,
               round(sum(valid_seconds) / 86400.0, 6) AS valid_share,
               count(*) FILTER (WHERE spread <= 0) AS crossed_minutes,
               min(mid_low) AS mid_low,
               max(mid_high) AS mid_high
        FROM read_parquet('{pattern}', filename = true, union_by_name = true) GROUP BY 1 ORDER BY 1
        """
    )
    columns = [d[0] for d in cursor.description]
    frame = pl.DataFrame(cursor.fetchall(), schema=columns, orient="row")
    days = [dt.date.fromisoformat(d) for d in frame["day"]]
    expected = {days[0] + dt.timedelta(days=k) for k in range((days[-1] - days[0]).days + 1)}
    return InstrumentDays(instrument, frame, missing=sorted(expected - set(days)),
                          short=frame.filter(frame["rows"] != MINUTES)["day"].to_list())


def book_days_summary(settings: Settings, instruments: Sequence[Instrument], connection: Any) -> BookDaysSummary | None:
    """Every instrument with days, each on its own (None: no instrument has a day)."""
    found = [d for d in (instrument_days(settings, i, connection) for i in instruments) if d is not None]
    return BookDaysSummary(found) if found else None
