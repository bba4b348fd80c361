"""Streaming reads of one day's file: a Bybit `.data.zip`, a `.jsonl.gz`, or plain JSON lines.

The file is never unpacked to disk nor held in memory: bytes arrive in bounded chunks. A
background thread decompresses the next chunks while the caller parses the current one
(inflating releases the GIL and so does the numba replay), so the two overlap on two cores.

Inflating is ISA-L's (`isal`): about three times the speed of `zipfile`'s read (etl_bench.py
prints both), which matters because with zlib decompression was a third of a day's CPU time.
A ZIP member's deflate data is read straight from the archive, framed as a gzip stream (the
central directory gives its CRC-32 and size for the trailer), so ISA-L's gzip reader inflates
it into buffers we own and checks the CRC and size as `zipfile` would. The engine reuses those
buffers (`ChunkPool`), which spares most of the page faults that a fresh bytes object per
chunk costs in the threaded replay: a small CPU saving (stages_bench.py prints both).
"""

from __future__ import annotations

import gzip
import io
import queue
import struct
import threading
import zipfile
import zlib
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

from isal import igzip, isal_zlib

CHUNK_BYTES = 4 << 20  # at most, per chunk
PREFETCH_CHUNKS = 4
READ_BYTES = 1 << 20  # compressed bytes read at a time
LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, then name and extra-field lengths
LOCAL_HEADER_SIGNATURE = b"PK\x03\x04"
ZIP_ENCRYPTED = 0x1  # general-purpose flag bit 0: the member is encrypted
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, no mtime
# ISA-L's C gzip reader fills a caller's buffer with no copy; it is private to python-isal, so
# the public IGzipFile (the same checks, a little slower) stands in if a release drops it.
_GZIP_READER = getattr(isal_zlib, "_GzipReader", None)


class OrderBookInputError(ValueError):
    """Bad input: the message names the file (and the line, when there is one) and what is wrong."""


def _member_name(path: Path, archive: zipfile.ZipFile) -> zipfile.ZipInfo:
    members = [info for info in archive.infolist() if not info.is_dir()]
    if len(members) != 1:
        raise OrderBookInputError(
            f"{path}: a day's ZIP must hold exactly one member, found {len(members)}"
        )
    return members[0]


def _zip_member(path: Path) -> zipfile.ZipInfo:
    try:
        with zipfile.ZipFile(path) as archive:
            return _member_name(path, archive)
    except zipfile.BadZipFile as exc:
        raise OrderBookInputError(f"{path}: corrupt or truncated ZIP ({exc})") from exc


class _DeflateAsGzip(io.RawIOBase):
    """A ZIP member's raw deflate bytes, read from the archive, framed as one gzip member.

    The trailer carries the CRC-32 and size (mod 2**32) the central directory gives, so the
    gzip reader's own end-of-stream checks are zipfile's checks.
    """

    def __init__(self, path: Path, member: zipfile.ZipInfo) -> None:
        self.where = f"{path}: corrupt or truncated ZIP member {member.filename!r}"
        self._raw = open(path, "rb")  # noqa: SIM115 - the stream owns the file until its close()
        try:
            self._raw.seek(member.header_offset)
            header = self._raw.read(LOCAL_HEADER.size)
            if len(header) < LOCAL_HEADER.size or header[:4] != LOCAL_HEADER_SIGNATURE:
                raise OrderBookInputError(f"{self.where}: no local header at byte {member.header_offset}")
            _, name_len, extra_len = LOCAL_HEADER.unpack(header)
            self._raw.seek(member.header_offset + LOCAL_HEADER.size + name_len + extra_len)
        except BaseException:
            self._raw.close()
            raise
        self._left = member.compress_size
        self._pending = GZIP_HEADER  # framing bytes due before the data (then after it)
        self._trailer = struct.pack("<II", member.CRC, member.file_size & 0xFFFFFFFF)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        if not self._pending and self._left == 0 and self._trailer:
            self._pending, self._trailer = self._trailer, b""
        if self._pending:
            n = min(len(view), len(self._pending))
            view[:n] = self._pending[:n]
            self._pending = self._pending[n:]
            return n
        if self._left == 0:
            return 0
        n = self._raw.readinto(view[: min(len(view), self._left, READ_BYTES)])
        if not n:
            raise OrderBookInputError(f"{self.where}: the archive ends {self._left} bytes early")
        self._left -= n
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


Item = TypeVar("Item")


class ByteStream(Protocol):
    """What the engine reads from: bytes into a buffer it owns, 0 at the end."""

    def readinto(self, buffer: Any, /) -> int: ...

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


class _SizedMember(io.RawIOBase):
    """The inflated member; at its end the byte count must be the directory's (all 64 bits)."""

    def __init__(self, inflated: ByteStream, member: zipfile.ZipInfo, where: str) -> None:
        self._inflated = inflated
        self._expected = member.file_size
        self._where = where
        self._count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._inflated.readinto(buffer)
        self._count += n
        if n == 0 and self._count != self._expected:
            raise OrderBookInputError(
                f"{self._where}: {self._count} bytes inflated, the directory says {self._expected}"
            )
        return n


@contextmanager
def _gzip_stream(raw: io.RawIOBase | io.BufferedReader) -> Iterator[ByteStream]:
    """ISA-L's gzip reader over `raw`; both closed at the end."""
    with raw:
        if _GZIP_READER is not None:
            reader = _GZIP_READER(raw, READ_BYTES)
        else:
            reader = igzip.IGzipFile(fileobj=raw, mode="rb")
        try:
            yield reader
        finally:
            reader.close()


@contextmanager
def _read_errors(path: Path, where: str) -> Iterator[None]:
    """Decompression errors, raised anywhere in the block, as OrderBookInputError naming the file."""
    try:
        yield
    except OrderBookInputError:
        raise
    except zipfile.BadZipFile as exc:
        raise OrderBookInputError(f"{path}: corrupt or truncated ZIP ({exc})") from exc
    except gzip.BadGzipFile as exc:
        text = str(exc)
        if "CRC" in text:
            text = f"bad CRC-32 ({text})"
        elif "length" in text:
            text = f"the bytes inflated are not the size it says ({text})"
        raise OrderBookInputError(f"{where}: {text}") from exc
    except (EOFError, zlib.error, isal_zlib.error, OSError) as exc:  # type: ignore[misc]  # isal_zlib.error is a class its stubs do not declare
        raise OrderBookInputError(f"{where}: truncated or corrupt compressed data ({exc})") from exc


@contextmanager
def open_day_stream(path: str | Path) -> Iterator[ByteStream]:
    """The decompressed bytes of one day's file as a binary stream, whatever its packing.

    Read and readinto errors inside the `with` block come out as OrderBookInputError.
    """
    path = Path(path)
    if not path.is_file():
        raise OrderBookInputError(f"{path}: no such file")
    name = path.name.lower()
    if name.endswith(".zip"):
        member = _zip_member(path)
        if member.flag_bits & ZIP_ENCRYPTED:
            raise OrderBookInputError(
                f"{path}: encrypted ZIP member {member.filename!r} is not supported (unpack it with its password)"
            )
        if member.compress_type == zipfile.ZIP_DEFLATED:
            framed = _DeflateAsGzip(path, member)
            with _read_errors(path, framed.where), _gzip_stream(framed) as inflated:
                yield _SizedMember(inflated, member, framed.where)
            return
        # stored, bzip2, lzma: the standard library's reader, which checks the CRC too
        with _read_errors(path, f"{path}: corrupt ZIP member {member.filename!r}"), \
                zipfile.ZipFile(path) as archive, archive.open(member) as stream:
            yield stream  # type: ignore[misc]  # a ZipExtFile has readinto; typeshed says IO[bytes]
    elif name.endswith(".gz"):
        with _read_errors(path, str(path)), _gzip_stream(open(path, "rb")) as stream:
            yield stream
    else:
        with _read_errors(path, str(path)), open(path, "rb") as stream:
            yield stream


def iter_chunks(path: str | Path, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The file's decompressed bytes as independent bytes objects of at most `chunk_bytes`."""
    with open_day_stream(path) as stream:
        while chunk := stream.read(chunk_bytes):
            yield chunk


class ChunkPool:
    """Chunk buffers reused from one chunk to the next instead of allocated afresh.

    A chunk from `pooled_chunks` is a view of one of these buffers: valid until the consumer
    hands it back with `give_back`, refilled after. When none is free a new one is made, so a
    consumer that keeps a chunk never blocks the reader; memory stays bounded because the
    reader runs at most a few chunks ahead (see `prefetched`).
    """

    def __init__(self, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.chunk_bytes = chunk_bytes
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()

    def take(self) -> bytearray:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            return bytearray(self.chunk_bytes)

    def give_back(self, chunk) -> None:
        """Returns a chunk's buffer for refilling; the chunk must not be read after this."""
        if isinstance(chunk, memoryview) and isinstance(chunk.obj, bytearray):
            self._free.put(chunk.obj)


def pooled_chunks(path: str | Path, pool: ChunkPool) -> Iterator[memoryview]:
    """The file's decompressed bytes as views of the pool's buffers, each filled by readinto."""
    with open_day_stream(path) as stream:
        while True:
            buffer = pool.take()
            n = stream.readinto(buffer)
            if not n:
                pool.give_back(memoryview(buffer))
                return
            yield memoryview(buffer)[:n]


_END = object()


def prefetched(chunks: Iterator[Item], depth: int = PREFETCH_CHUNKS) -> Generator[Item, None, None]:
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
