"""Finding one day's Bybit archive under the root, or downloading it from the public archive.

Layout under the root is whatever the user keeps: usually year folders (`2025/`), sometimes a
symbol folder, sometimes flat. The likely places are looked at first (cheap on an rclone mount),
then the whole tree. Depth 200 is preferred over 500 when both exist (`depths` gives the order).

A download streams into a temporary name in the root's year folder and is renamed only when the
whole body arrived and the ZIP opens: a dropped connection never leaves a partial file under the
day's archive name.

This module does not import dagster.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ArchiveNotFoundError",
    "DownloadError",
    "DownloadResult",
    "archive_name",
    "archive_url",
    "copy_archive",
    "download_archive",
    "find_archive",
]

CHUNK_BYTES = 1 << 20
USER_AGENT = "quantgod/0.1 (+https://github.com/; historical order-book archive)"


class ArchiveNotFoundError(FileNotFoundError):
    """The day's archive is not under the root (and downloading is off or found nothing)."""


class DownloadError(OSError):
    """The download failed; nothing was left under the day's archive name."""


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    url: str
    bytes: int
    seconds: float


def archive_name(day: dt.date, symbol: str, depth: int) -> str:
    return f"{day.isoformat()}_{symbol}_ob{depth}.data.zip"


def archive_url(base_url: str, day: dt.date, symbol: str, depth: int) -> str:
    return f"{base_url.rstrip('/')}/{symbol}/{archive_name(day, symbol, depth)}"


def _candidate_folders(root: Path, day: dt.date, symbol: str) -> list[Path]:
    year = f"{day.year:04d}"
    return [root / year, root, root / symbol / year, root / symbol, root / year / symbol]


def find_archive(root: str | Path, day: dt.date, symbol: str, depths: Sequence[int] = (200, 500)) -> Path | None:
    """The day's archive under `root` (recursively), the first of `depths` that exists; else None."""
    root = Path(root)
    names = [archive_name(day, symbol, depth) for depth in depths]
    found: dict[str, Path] = {}
    for name in names:  # the likely folders first: on a mounted drive a full walk is slow
        for folder in _candidate_folders(root, day, symbol):
            if (folder / name).is_file():
                found.setdefault(name, folder / name)
    if names and names[0] in found:
        return found[names[0]]
    pattern = f"{day.isoformat()}_{symbol}_ob*.data.zip"
    for path in sorted(root.rglob(pattern)):
        if path.is_file() and path.name in names:
            found.setdefault(path.name, path)
    return next((found[name] for name in names if name in found), None)


def _stream_to(url: str, target: Path, timeout_s: float) -> int:
    """Streams `url` into `target` (a temp file); returns bytes written; raises on a short body."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout_s) as response, open(target, "wb") as out:
        expected = response.headers.get("Content-Length")
        written = 0
        while True:
            chunk = response.read(CHUNK_BYTES)
            if not chunk:
                break
            out.write(chunk)
            written += len(chunk)
        if expected is not None and written != int(expected):
            raise DownloadError(f"{url}: connection closed after {written:,} of {int(expected):,} bytes")
    return written


def download_archive(
    day: dt.date,
    symbol: str,
    root: str | Path,
    base_url: str,
    *,
    depths: Sequence[int] = (200, 500),
    timeout_s: float = 60.0,
) -> DownloadResult:
    """Downloads the day's archive into `{root}/{YYYY}/`, trying `depths` in order (404 -> next).

    Raises ArchiveNotFoundError when the server has none of them, DownloadError on any other
    failure (connection dropped, HTTP error, not a ZIP). Only a complete, readable ZIP is renamed
    to the archive name.
    """
    folder = Path(root) / f"{day.year:04d}"
    folder.mkdir(parents=True, exist_ok=True)
    tried: list[str] = []
    for depth in depths:
        url = archive_url(base_url, day, symbol, depth)
        final = folder / archive_name(day, symbol, depth)
        fd, temp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=folder)
        os.close(fd)
        temp = Path(temp_name)
        started = time.perf_counter()
        try:
            try:
                size = _stream_to(url, temp, timeout_s)
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
            os.replace(temp, final)
            return DownloadResult(final, url, size, time.perf_counter() - started)
        finally:
            temp.unlink(missing_ok=True)
    raise ArchiveNotFoundError(
        f"{day} {symbol}: not in the public archive: tried " + ", ".join(tried)
    )


def copy_archive(source: str | Path, root: str | Path) -> Path:
    """Places an archive under `{root}/{YYYY}/` by its name's date (used by the demo and tests)."""
    source = Path(source)
    year = source.name[:4]
    target = Path(root) / year / source.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target
