"""Writing outputs so that a reader never sees half a file: temp name beside it, then rename."""

from __future__ import annotations

import functools
import glob
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import polars as pl


def remove_stale_temps(output: Path) -> None:
    """Removes temp files a killed write of `output` left behind (one writer a day at a time)."""
    for stale in output.parent.glob(f".{glob.escape(output.name)}.*.tmp"):
        stale.unlink(missing_ok=True)


@functools.cache
def current_umask() -> int:
    # reading the umask means setting it; done once, before any worker thread writes
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_parquet_atomic(frame: pl.DataFrame, output: Path, metadata: Mapping[str, str]) -> int:
    """Writes `frame` (zstd) with key-value `metadata`; returns the file's size in bytes.

    A failure (or a kill) leaves the previous file, if any, untouched and no temp file behind.
    """
    import pyarrow.parquet as pq

    output.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(output)
    table = frame.to_arrow()
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    fd, temp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(fd)
    try:
        # no dictionary pages: float book columns rarely repeat a value, so building them is
        # wasted work, and the file comes out smaller without them
        pq.write_table(table, temp_name, compression="zstd", use_dictionary=False)
        os.chmod(temp_name, 0o666 & ~current_umask())  # mkstemp makes 0600; outputs follow the umask
        os.replace(temp_name, output)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return output.stat().st_size
