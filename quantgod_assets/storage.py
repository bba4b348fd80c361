"""Writing outputs so that a reader never sees half a file: temp name beside it, then rename."""

from __future__ import annotations

import functools
import glob
import os
import socket
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import polars as pl

# Temp and staged names carry their writer: `.{name}~{pid}@{host}~{random}.tmp`, so the next write
# of a day can tell a killed writer's leftovers from the live file of a writer still running.
HOST = socket.gethostname().replace("~", "-")
FOREIGN_STALE_S = 24 * 3600  # another host's leftovers on a shared mount: only when this old


def writer_prefix(output: Path) -> str:
    return f".{output.name}~{os.getpid()}@{HOST}~"


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate it there: assume alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _left_by_a_dead_writer(path: Path, now: float) -> bool:
    try:
        writer = path.name.split("~")[1]
        pid_text, host = writer.split("@", 1)
        pid = int(pid_text)
    except (IndexError, ValueError):
        return False  # not a name this module makes
    if host == HOST:
        return pid != os.getpid() and not _pid_alive(pid)
    try:
        return now - path.stat().st_mtime > FOREIGN_STALE_S
    except FileNotFoundError:
        return False


def remove_stale_temps(output: Path) -> None:
    """Removes the temp and staged files killed writes of `output` left beside it (never a live one's)."""
    now = time.time()
    for pattern in (f".{glob.escape(output.name)}~*", f"..{glob.escape(output.name)}~*"):
        for stale in output.parent.glob(pattern):
            if _left_by_a_dead_writer(stale, now):
                stale.unlink(missing_ok=True)


@functools.cache
def current_umask() -> int:
    # reading the umask means setting it; done once, before any worker thread writes
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(output: str | Path, write: Callable[[Path], object]) -> Path:
    """`write(temp)` to a temp name beside `output`, then the rename over it: every output file
    (Parquet days, the model bundle, best_params.json) goes through here.

    A failure (or a kill) leaves the previous file, if any, untouched; a failure leaves no temp
    file, and the next write of `output` removes what a kill left. The file follows the umask.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(output)
    fd, temp_name = tempfile.mkstemp(prefix=writer_prefix(output), suffix=".tmp", dir=output.parent)
    os.close(fd)
    temp = Path(temp_name)
    try:
        write(temp)
        os.chmod(temp, 0o666 & ~current_umask())  # mkstemp makes 0600
        os.replace(temp, output)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return output


def write_parquet_atomic(frame: pl.DataFrame, output: Path, metadata: Mapping[str, str]) -> int:
    """Writes `frame` (zstd) with key-value `metadata`, atomically; returns the file's size in bytes."""
    import pyarrow.parquet as pq

    table = frame.to_arrow()
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    # no dictionary pages: float book columns rarely repeat a value, so building them is
    # wasted work, and the file comes out smaller without them
    atomic_write(output, lambda temp: pq.write_table(table, temp, compression="zstd", use_dictionary=False))
    return output.stat().st_size


def sqlite_file(url: str) -> Path | None:
    """The database file of a `sqlite:///path` URL (also `sqlite:///file:path?...&uri=true`,
    query dropped), else None (another database, or `:memory:`): the Optuna and MLflow stores."""
    if not url.startswith("sqlite:///"):
        return None
    name = url.removeprefix("sqlite:///")
    if name.startswith("file:"):
        name = name.removeprefix("file:").partition("?")[0]
    return None if name in ("", ":memory:") else Path(name)

