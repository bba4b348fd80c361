"""Finding one day's Bybit archive under the root, or downloading it from the public archive.

Layout under the root follows Bybit's categories. Linear (USDT perpetual) days lie wherever the
user keeps them: usually year folders (`2025/`), sometimes a symbol folder, sometimes flat, or in
the archive's own order (`linear/BTCUSDT/`). Spot and inverse days, whose file names are the same
as linear ones (`2025-03-14_BTCUSDT_ob200.data.zip` exists in both), must lie under
`{root}/{category}/` (`spot/BTCUSDT/2025/`), and linear searches never look there. The likely places
are looked at first (cheap on an rclone mount), then the category's tree. Depth 200 is preferred
over 500 when both exist (`depths` gives the order). Downloads land in `{root}/{YYYY}/` for linear
(the layout before categories) and `{root}/{category}/{SYMBOL}/{YYYY}/` for the others; the URL is
`{base_url}/{category}/{SYMBOL}/{file}`.

A download streams into a temporary name in the root's year folder and is renamed only when the
whole body arrived and its ZIP member inflated to the end with the CRC-32 and size its directory
gives: a dropped connection or corrupt bytes never leave a file under the day's archive name.
Each download has an overall deadline and a size cap besides the per-read timeout, so a server
that drips bytes or sends without end cannot hold a run forever.

An archive already on disk that proves corrupt is moved aside by `quarantine_archive` into
`{root}/corrupt/` under a name `find_archive` never matches, so it can be fetched again.

The symbol is checked against `SYMBOL_PATTERN` before it becomes part of any path or URL.

This module does not import dagster.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CATEGORIES",
    "CORRUPT_FOLDER",
    "SYMBOL_PATTERN",
    "ArchiveNotFoundError",
    "CorruptArchiveError",
    "DownloadError",
    "DownloadResult",
    "InvalidSymbolError",
    "archive_days",
    "archive_name",
    "archive_url",
    "check_category",
    "check_symbol",
    "copy_archive",
    "download_archive",
    "download_folder",
    "find_archive",
    "quarantine_archive",
    "verify_archive",
]

CHUNK_BYTES = 1 << 20
VERIFY_BYTES = 4 << 20  # inflated bytes read at a time when checking a ZIP member
USER_AGENT = "quantgod/0.1 (+https://github.com/; historical order-book archive)"
SYMBOL_PATTERN = r"^[A-Z0-9]{2,30}$"  # BTCUSDT, 1000PEPEUSDT: nothing that can change a path or URL
CORRUPT_FOLDER = "corrupt"  # {root}/corrupt/{name}.corrupt: archives that proved corrupt
DEFAULT_DEADLINE_S = 1800.0
DEFAULT_MAX_BYTES = 2 << 30  # a real day is ~360 MB

_SYMBOL = re.compile(SYMBOL_PATTERN)
CATEGORIES = ("linear", "spot", "inverse")  # Bybit's archive folders: orderbook/{category}/{SYMBOL}/


class ArchiveNotFoundError(FileNotFoundError):
    """The day's archive is not under the root (and downloading is off or found nothing)."""


class DownloadError(OSError):
    """The download failed; nothing was left under the day's archive name."""


class CorruptArchiveError(ValueError):
    """The archive's ZIP member does not inflate to the end with its CRC-32 and size."""


class InvalidSymbolError(ValueError):
    """The symbol does not match SYMBOL_PATTERN (it would become part of a path and a URL)."""


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    url: str
    bytes: int
    seconds: float


def check_symbol(symbol: str) -> str:
    """`symbol` when it matches SYMBOL_PATTERN; InvalidSymbolError otherwise."""
    if not isinstance(symbol, str) or not _SYMBOL.fullmatch(symbol):
        raise InvalidSymbolError(
            f"symbol {symbol!r} must match {SYMBOL_PATTERN} (upper-case letters and digits, e.g. BTCUSDT)"
        )
    return symbol


def archive_name(day: dt.date, symbol: str, depth: int) -> str:
    return f"{day.isoformat()}_{check_symbol(symbol)}_ob{int(depth)}.data.zip"


def check_category(category: str) -> str:
    if category not in CATEGORIES:
        raise ValueError(f"category {category!r} must be one of {', '.join(CATEGORIES)}")
    return category


def archive_url(base_url: str, day: dt.date, symbol: str, depth: int, category: str = "linear") -> str:
    """`{base}/{category}/{SYMBOL}/{file}`; a base that already ends in a category folder (the older
    `.../orderbook/linear` setting) has it replaced by `category`."""
    name = archive_name(day, symbol, depth)
    return f"{archive_base(base_url)}/{check_category(category)}/{symbol}/{name}"


def archive_base(base_url: str) -> str:
    """The archive's root URL: `https://quote-saver.bycsi.com/orderbook`, a trailing category cut."""
    base = base_url.rstrip("/")
    head, _, last = base.rpartition("/")
    return head if last in CATEGORIES and head else base


def download_folder(root: str | Path, day: dt.date, symbol: str, category: str = "linear") -> Path:
    """Where a downloaded day lands: `{root}/{YYYY}` (linear), `{root}/{category}/{SYMBOL}/{YYYY}`."""
    root, symbol = Path(root), check_symbol(symbol)
    base = root if check_category(category) == "linear" else root / category / symbol
    return base / f"{day.year:04d}"


def _candidate_folders(root: Path, day: dt.date, symbol: str, category: str = "linear") -> list[Path]:
    symbol = check_symbol(symbol)
    year = f"{day.year:04d}"
    own = root / check_category(category)
    ordered = [own / symbol / year, own / symbol, own / year, own]
    if category == "linear":  # the layouts before categories: linear was the only one
        ordered += [root / year, root, root / symbol / year, root / symbol, root / year / symbol]
    return ordered


def _other_category(path: Path, root: Path, category: str) -> bool:
    """Whether `path` lies under another category's folder (or `corrupt/`) of `root`."""
    try:
        first = path.relative_to(root).parts[0]
    except (ValueError, IndexError):
        return False
    return first == CORRUPT_FOLDER or (first in CATEGORIES and first != category)


def archive_days(root: str | Path, symbol: str, depths: Sequence[int] = (200, 500),
                 category: str = "linear") -> list[dt.date]:
    """The days with an archive of `symbol` at one of `depths` under `root`, ascending: the folders
    `find_archive` looks in first (year folders, the root, the symbol's folders, the category's),
    never `corrupt/` or another category's."""
    root = Path(root)
    symbol = check_symbol(symbol)
    own = root / check_category(category)
    bases = [own, own / symbol] + ([root, root / symbol] if category == "linear" else [])
    folders = [*bases, *(p for base in bases for p in sorted(base.glob("[0-9][0-9][0-9][0-9]")) if p.is_dir())]
    wanted = {f"ob{int(depth)}" for depth in depths}
    days = set()
    for folder in folders:
        for path in folder.glob(f"????-??-??_{symbol}_ob*.data.zip"):
            day_text, _, rest = path.name.partition(f"_{symbol}_")
            if rest.split(".", 1)[0] not in wanted:
                continue
            try:
                days.add(dt.date.fromisoformat(day_text))
            except ValueError:
                continue  # a name that only looks like a day
    return sorted(days)


def find_archive(
    root: str | Path,
    day: dt.date,
    symbol: str,
    depths: Sequence[int] = (200, 500),
    *,
    exclude: Collection[Path] = (),
    category: str = "linear",
) -> Path | None:
    """The day's archive of `symbol` in `category` under `root` (recursively), the first of `depths`
    that exists; else None. Paths in `exclude` (archives known to be corrupt) are passed over."""
    root = Path(root)
    names = [archive_name(day, symbol, depth) for depth in depths]
    skipped = {Path(p) for p in exclude}
    found: dict[str, Path] = {}
    for name in names:  # the likely folders first: on a mounted drive a full walk is slow
        for folder in _candidate_folders(root, day, symbol, category):
            if (folder / name).is_file() and folder / name not in skipped:
                found.setdefault(name, folder / name)
    if names and names[0] in found:
        return found[names[0]]
    pattern = f"{day.isoformat()}_{symbol}_ob*.data.zip"
    tree = root if category == "linear" else root / category
    for path in sorted(tree.rglob(pattern)):
        if (path.is_file() and path.name in names and path not in skipped
                and not _other_category(path, root, category)):
            found.setdefault(path.name, path)
    return next((found[name] for name in names if name in found), None)


def verify_archive(path: str | Path) -> int:
    """Inflates the day's ZIP member once, streaming, to the end: its CRC-32 and size are checked
    (the engine's own reader, `orderbook.reader.open_day_stream`). Returns the bytes inflated;
    raises CorruptArchiveError naming the file and what is wrong."""
    from .orderbook.reader import OrderBookInputError, open_day_stream

    path = Path(path)
    if not path.name.lower().endswith(".zip"):
        raise ValueError(f"{path}: not a .zip archive")
    buffer = memoryview(bytearray(VERIFY_BYTES))
    total = 0
    try:
        with open_day_stream(path) as stream:
            while n := stream.readinto(buffer):
                total += n
    except OrderBookInputError as exc:
        raise CorruptArchiveError(str(exc)) from exc
    return total


def quarantine_archive(path: str | Path, root: str | Path) -> Path:
    """Moves a corrupt archive to `{root}/corrupt/{name}.corrupt` (`.2.corrupt`, ... when taken):
    kept for a look, out of `find_archive`'s search. Returns the new path."""
    path = Path(path)
    folder = Path(root) / CORRUPT_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{path.name}.corrupt"
    k = 1
    while target.exists():
        k += 1
        target = folder / f"{path.name}.{k}.corrupt"
    shutil.move(path, target)
    return target


def _socket_of(response: Any) -> socket.socket | None:
    """The response's socket, to shorten its read timeout near the deadline (None if unreachable)."""
    raw = getattr(getattr(response, "fp", None), "raw", None)
    sock = getattr(raw, "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


def _stream_to(url: str, target: Path, timeout_s: float, deadline_s: float, max_bytes: int) -> int:
    """Streams `url` into `target` (a temp file); returns bytes written.

    `timeout_s` bounds each read; `deadline_s` the whole transfer (from the request on);
    `max_bytes` the body. Raises DownloadError on a short body or when a limit is passed."""
    started = time.monotonic()
    deadline = started + deadline_s

    def over_deadline(written: int) -> DownloadError:
        return DownloadError(
            f"{url}: download deadline of {deadline_s:g} s exceeded after {written:,} bytes "
            f"in {time.monotonic() - started:.1f} s (download.deadline_s in etl.yaml)"
        )

    def over_cap(what: str) -> DownloadError:
        return DownloadError(
            f"{url}: {what} is over the size cap of {max_bytes:,} bytes (download.max_bytes in etl.yaml)"
        )

    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    written = 0
    try:
        with urllib.request.urlopen(request, timeout=min(timeout_s, deadline_s)) as response, \
                open(target, "wb") as out:
            expected = response.headers.get("Content-Length")
            if expected is not None and expected.strip().isdigit() and int(expected) > max_bytes:
                raise over_cap(f"the announced size {int(expected):,} bytes")
            sock = _socket_of(response)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise over_deadline(written)
                if sock is not None:
                    sock.settimeout(min(timeout_s, left))
                chunk = response.read1(CHUNK_BYTES)  # what one socket read gives: no waiting for a full chunk
                if not chunk:
                    break
                written += len(chunk)
                if written > max_bytes:
                    raise over_cap(f"the body (more than {max_bytes:,} bytes received)")
                out.write(chunk)
            if expected is not None and expected.strip().isdigit() and written != int(expected):
                raise DownloadError(f"{url}: connection closed after {written:,} of {int(expected):,} bytes")
    except TimeoutError as exc:  # a read timed out: the deadline's, or timeout_s's own
        if time.monotonic() >= deadline - 0.05:
            raise over_deadline(written) from exc
        raise DownloadError(f"{url}: no data for {timeout_s:g} s (download.timeout_s in etl.yaml)") from exc
    return written


def download_archive(
    day: dt.date,
    symbol: str,
    root: str | Path,
    base_url: str,
    *,
    depths: Sequence[int] = (200, 500),
    timeout_s: float = 60.0,
    deadline_s: float = DEFAULT_DEADLINE_S,
    max_bytes: int = DEFAULT_MAX_BYTES,
    category: str = "linear",
) -> DownloadResult:
    """Downloads the day's archive into `download_folder` (`{root}/{YYYY}/` for linear), trying
    `depths` in order (404 -> next).

    `timeout_s` bounds each socket read, `deadline_s` each file's whole transfer, `max_bytes`
    its size. Raises ArchiveNotFoundError when the server has none of them, DownloadError on any
    other failure (connection dropped, HTTP error, a limit passed, not a ZIP, a ZIP whose member
    fails its CRC-32 or size). Only a complete, verified ZIP is renamed to the archive name.
    """
    folder = download_folder(root, day, symbol, category)
    folder.mkdir(parents=True, exist_ok=True)
    tried: list[str] = []
    for depth in depths:
        url = archive_url(base_url, day, symbol, depth, category)
        final = folder / archive_name(day, symbol, depth)
        # `.part.zip`: a hidden name find_archive never matches, that the ZIP reader still opens
        fd, temp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part.zip", dir=folder)
        os.close(fd)
        temp = Path(temp_name)
        started = time.perf_counter()
        try:
            try:
                size = _stream_to(url, temp, timeout_s, deadline_s, max_bytes)
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    tried.append(f"{url} (404)")
                    continue
                raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
            except DownloadError:
                raise
            except Exception as exc:  # URLError, timeouts, http.client.IncompleteRead: a broken transfer
                raise DownloadError(f"{url}: {type(exc).__name__}: {exc}") from exc
            try:
                with zipfile.ZipFile(temp) as archive:
                    if not archive.namelist():
                        raise zipfile.BadZipFile("no member")
            except zipfile.BadZipFile as exc:
                raise DownloadError(f"{url}: the downloaded file is not a readable ZIP ({exc})") from exc
            try:
                verify_archive(temp)
            except CorruptArchiveError as exc:
                raise DownloadError(f"{url}: the downloaded archive is corrupt: {exc}") from exc
            os.replace(temp, final)
            return DownloadResult(final, url, size, time.perf_counter() - started)
        finally:
            temp.unlink(missing_ok=True)
    raise ArchiveNotFoundError(
        f"{day} {symbol} {category}: not in the public archive: tried " + ", ".join(tried)
    )


def copy_archive(source: str | Path, root: str | Path, category: str = "linear") -> Path:
    """Places an archive where a download of it would land, by its name's date and symbol (used by
    the demo and tests)."""
    source = Path(source)
    day = dt.date.fromisoformat(source.name[:10])
    symbol = source.name[11:].partition("_ob")[0]
    target = download_folder(root, day, symbol, category) / source.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target
