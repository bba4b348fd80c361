"""Writing outputs so that a reader never sees half a file: temp name beside it, then rename."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import polars as pl


def write_parquet_atomic(frame: pl.DataFrame, output: Path, metadata: Mapping[str, str]) -> int:
    """Writes `frame` (zstd) with key-value `metadata`; returns the file's size in bytes.

    A failure (or a kill) leaves the previous file, if any, untouched and no temp file behind.
    """
    import pyarrow.parquet as pq

    output.parent.mkdir(parents=True, exist_ok=True)
    table = frame.to_arrow()
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    fd, temp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(fd)
    try:
        # no dictionary pages: float book columns rarely repeat a value, so building them is
        # wasted work, and the file comes out smaller without them
        pq.write_table(table, temp_name, compression="zstd", use_dictionary=False)
        os.replace(temp_name, output)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return output.stat().st_size
