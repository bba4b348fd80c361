"""Dagster resources: the settings (paths, symbol, stage configs) and DuckDB over the Parquet days.

Settings are read when a run uses them, not when the definitions load, so `QUANTGOD_*` variables
set for a run (or by a test) always apply.
"""

from __future__ import annotations

import dagster as dg
from dagster_duckdb import DuckDBResource

from .settings import ConfigError, Settings, load_settings

__all__ = ["BOOK_VIEW", "QuantGodSettings", "book_view_sql", "resources"]

BOOK_VIEW = "preprocessed_book"


class QuantGodSettings(dg.ConfigurableResource):
    """configs/*.yaml + QUANTGOD_* variables; `config_dir` overrides QUANTGOD_CONFIG_DIR."""

    config_dir: str | None = None

    def load(self) -> Settings:
        """The settings; a settings file or variable that is wrong fails the step in one line
        (`configs/training.yaml: ...`), no stack: it is the user's input, not a bug."""
        try:
            return load_settings(self.config_dir)
        except ConfigError as exc:
            raise dg.Failure(description=str(exc)) from None


def book_view_sql(parquet_glob: str, view: str = BOOK_VIEW) -> str:
    """A read-only view over every preprocessed day (the files are never written through it)."""
    escaped = parquet_glob.replace("'", "''")
    return (
        f"CREATE OR REPLACE TEMP VIEW {view} AS "
        f"SELECT * FROM read_parquet('{escaped}', filename = true, union_by_name = true)"
    )


def resources() -> dict[str, object]:
    return {
        "quantgod": QuantGodSettings(),
        # in-memory: DuckDB only reads the Parquet files, so there is no database file to share or lock
        "duckdb": DuckDBResource(database=":memory:"),
    }
