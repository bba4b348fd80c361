"""Streaming reads of one day's file: a Bybit `.data.zip`, a `.jsonl.gz`, or plain JSON lines.

The file is never unpacked to disk nor held in memory: bytes arrive in bounded chunks. A
background thread decompresses the next chunks while the caller parses the current one
(zlib releases the GIL and so does the numba replay), so the two overlap on two cores.
"""

from __future__ import annotations

import gzip
import queue
import threading
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

CHUNK_BYTES = 4 << 20
PREFETCH_CHUNKS = 4


class OrderBookInputError(ValueError):
    """Bad input: the message names the file (and the line, when there is one) and what is wrong."""


def _member_name(path: Path, archive: zipfile.ZipFile) -> zipfile.ZipInfo:
    members = [info for info in archive.infolist() if not info.is_dir()]
    if len(members) != 1:
        raise OrderBookInputError(
            f"{path}: a day's ZIP must hold exactly one member, found {len(members)}"
        )
    return members[0]


@contextmanager
def open_day_stream(path: str | Path) -> Iterator[BinaryIO]:
    """The decompressed bytes of one day's file as a binary stream, whatever its packing."""
    path = Path(path)
    if not path.is_file():
        raise OrderBookInputError(f"{path}: no such file")
    name = path.name.lower()
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                with archive.open(_member_name(path, archive)) as member:
                    yield member
        elif name.endswith(".gz"):
            with gzip.open(path, "rb") as stream:
                yield stream
        else:
            with open(path, "rb") as stream:
                yield stream
    except zipfile.BadZipFile as exc:
        raise OrderBookInputError(f"{path}: corrupt or truncated ZIP ({exc})") from exc
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise OrderBookInputError(f"{path}: truncated or corrupt compressed data ({exc})") from exc


def iter_chunks(path: str | Path, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The file's decompressed bytes in chunks of at most `chunk_bytes`."""
    with open_day_stream(path) as stream:
        while True:
            try:
                chunk = stream.read(chunk_bytes)
            except zipfile.BadZipFile as exc:  # a CRC mismatch surfaces on the last read
                raise OrderBookInputError(f"{path}: corrupt ZIP member ({exc})") from exc
            except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
                raise OrderBookInputError(
                    f"{path}: truncated or corrupt compressed data ({exc})"
                ) from exc
            if not chunk:
                return
            yield chunk


_END = object()


def prefetched(chunks: Iterator[bytes], depth: int = PREFETCH_CHUNKS) -> Iterator[bytes]:
    """Runs `chunks` in a background thread, `depth` chunks ahead; errors re-raise here."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in chunks:
                if stop.is_set():
                    return
                slots.put(chunk)
            slots.put(_END)
        except BaseException as exc:  # handed to the consumer, raised there
            slots.put(exc)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:  # stops an upstream stage (and its thread) at once
                close()

    worker = threading.Thread(target=produce, name="quantgod-reader", daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                slots.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.05)
