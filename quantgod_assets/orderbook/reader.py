"""Streaming reads of one day's file: a Bybit `.data.zip`, a `.jsonl.gz`, or plain JSON lines.

The file is never unpacked to disk nor held in memory: bytes arrive in bounded chunks. A
background thread decompresses the next chunks while the caller parses the current one
(inflating releases the GIL and so does the numba replay), so the two overlap on two cores.

Inflating is ISA-L's (`isal`): about three times the speed of `zipfile`'s read (etl_bench.py
prints both), which matters because with zlib decompression was a third of a day's CPU time. A ZIP member is inflated
straight from its bytes in the archive (the central directory says where they lie), and its
size and CRC-32 are checked at the end as `zipfile` would.
"""

from __future__ import annotations

import gzip
import queue
import struct
import threading
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from isal import igzip, isal_zlib

CHUNK_BYTES = 8 << 20  # at most; a 1 MB compressed read inflates to one chunk of 4-7 MB
PREFETCH_CHUNKS = 4
READ_BYTES = 1 << 20  # compressed bytes read at a time
LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, then name and extra-field lengths
LOCAL_HEADER_SIGNATURE = b"PK\x03\x04"


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
            with igzip.open(path, "rb") as stream:
                yield stream
        else:
            with open(path, "rb") as stream:
                yield stream
    except zipfile.BadZipFile as exc:
        raise OrderBookInputError(f"{path}: corrupt or truncated ZIP ({exc})") from exc
    except (EOFError, zlib.error, isal_zlib.error, gzip.BadGzipFile) as exc:
        raise OrderBookInputError(f"{path}: truncated or corrupt compressed data ({exc})") from exc


def iter_chunks(path: str | Path, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The file's decompressed bytes in chunks of at most `chunk_bytes`."""
    path = Path(path)
    if path.name.lower().endswith(".zip") and path.is_file():
        member = _zip_member(path)
        if member.compress_type in (zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED) and not member.flag_bits & 1:
            yield from _member_chunks(path, member, chunk_bytes)
            return
    yield from _stream_chunks(path, chunk_bytes)  # other ZIP methods, gzip, plain


def _zip_member(path: Path) -> zipfile.ZipInfo:
    try:
        with zipfile.ZipFile(path) as archive:
            return _member_name(path, archive)
    except zipfile.BadZipFile as exc:
        raise OrderBookInputError(f"{path}: corrupt or truncated ZIP ({exc})") from exc


def _member_chunks(path: Path, member: zipfile.ZipInfo, chunk_bytes: int) -> Iterator[bytes]:
    """A deflated or stored member, inflated from its bytes in the archive, size and CRC checked."""
    where = f"{path}: corrupt or truncated ZIP member {member.filename!r}"
    inflater = isal_zlib.decompressobj(-15) if member.compress_type == zipfile.ZIP_DEFLATED else None
    crc = 0
    size = 0
    with open(path, "rb") as raw:
        raw.seek(member.header_offset)
        header = raw.read(LOCAL_HEADER.size)
        if len(header) < LOCAL_HEADER.size or header[:4] != LOCAL_HEADER_SIGNATURE:
            raise OrderBookInputError(f"{where}: no local header at byte {member.header_offset}")
        _, name_len, extra_len = LOCAL_HEADER.unpack(header)
        raw.seek(member.header_offset + LOCAL_HEADER.size + name_len + extra_len)
        left = member.compress_size
        while left > 0:
            block = raw.read(min(READ_BYTES, left))
            if not block:
                raise OrderBookInputError(f"{where}: the archive ends {left} bytes early")
            left -= len(block)
            for chunk in _inflate(inflater, block, chunk_bytes, where):
                crc = isal_zlib.crc32(chunk, crc)
                size += len(chunk)
                yield chunk
    if inflater is not None and not inflater.eof:
        raise OrderBookInputError(f"{where}: the compressed stream ends before its end marker")
    if size != member.file_size:
        raise OrderBookInputError(f"{where}: {size} bytes inflated, the directory says {member.file_size}")
    if crc != member.CRC:
        raise OrderBookInputError(f"{where}: bad CRC-32 ({crc:08x}, the directory says {member.CRC:08x})")


def _inflate(inflater, block: bytes, chunk_bytes: int, where: str) -> Iterator[bytes]:
    """`block`'s inflated bytes in pieces of at most chunk_bytes (a bomb stays bounded)."""
    if inflater is None:  # stored
        for start in range(0, len(block), chunk_bytes):
            yield block[start:start + chunk_bytes]
        return
    try:
        while block:
            chunk = inflater.decompress(block, chunk_bytes)
            block = inflater.unconsumed_tail
            if chunk:
                yield chunk
            if inflater.eof:
                return
    except isal_zlib.error as exc:
        raise OrderBookInputError(f"{where}: {exc}") from exc


def _stream_chunks(path: Path, chunk_bytes: int) -> Iterator[bytes]:
    with open_day_stream(path) as stream:
        while True:
            try:
                chunk = stream.read(chunk_bytes)
            except zipfile.BadZipFile as exc:  # a CRC mismatch surfaces on the last read
                raise OrderBookInputError(f"{path}: corrupt ZIP member ({exc})") from exc
            except (EOFError, zlib.error, isal_zlib.error, gzip.BadGzipFile, OSError) as exc:
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
