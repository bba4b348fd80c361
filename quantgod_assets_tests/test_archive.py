from __future__ import annotations

import datetime as dt
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from quantgod_assets.archive import (
    ArchiveNotFoundError,
    DownloadError,
    archive_name,
    archive_url,
    download_archive,
    find_archive,
)

from .builders import ArchiveServer

DAY = dt.date(2025, 3, 14)


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_find_prefers_200_and_searches_recursively(tmp_path):
    assert find_archive(tmp_path, DAY, "BTCUSDT") is None
    deep500 = _touch(tmp_path / "old" / "2025" / "03" / archive_name(DAY, "BTCUSDT", 500))
    assert find_archive(tmp_path, DAY, "BTCUSDT") == deep500
    deep200 = _touch(tmp_path / "elsewhere" / "x" / archive_name(DAY, "BTCUSDT", 200))
    assert find_archive(tmp_path, DAY, "BTCUSDT") == deep200
    year200 = _touch(tmp_path / "2025" / archive_name(DAY, "BTCUSDT", 200))
    assert find_archive(tmp_path, DAY, "BTCUSDT") == year200
    assert find_archive(tmp_path, DAY, "BTCUSDT", depths=(500, 200)) == deep500
    assert find_archive(tmp_path, DAY, "ETHUSDT") is None
    assert find_archive(tmp_path, DAY + dt.timedelta(days=1), "BTCUSDT") is None


def test_find_ignores_partial_downloads(tmp_path):
    _touch(tmp_path / "2025" / (f".{archive_name(DAY, 'BTCUSDT', 200)}.abc.part"))
    assert find_archive(tmp_path, DAY, "BTCUSDT") is None


def test_archive_url():
    assert archive_url("https://quote-saver.bycsi.com/orderbook/linear/", DAY, "BTCUSDT", 500) == (
        "https://quote-saver.bycsi.com/orderbook/linear/BTCUSDT/2025-03-14_BTCUSDT_ob500.data.zip"
    )


# ---------------------------------------------------------------------------------------------
# A real HTTP server on 127.0.0.1


@pytest.fixture
def server() -> Iterator[ArchiveServer]:
    srv = ArchiveServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture(scope="module")
def zip_bytes(tmp_path_factory) -> bytes:
    from quantgod_assets.orderbook.synthetic import generate_days

    [path] = generate_days(DAY, 1, tmp_path_factory.mktemp("gen"), seed=5, duration_s=30)
    return path.read_bytes()


def _url_path(depth: int) -> str:
    return f"/orderbook/linear/BTCUSDT/{archive_name(DAY, 'BTCUSDT', depth)}"


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.is_file())


def test_download_streams_into_the_year_folder(tmp_path, server, zip_bytes):
    server.files[_url_path(200)] = zip_bytes
    result = download_archive(DAY, "BTCUSDT", tmp_path, server.base_url)
    assert result.path == tmp_path / "2025" / "2025-03-14_BTCUSDT_ob200.data.zip"
    assert result.path.read_bytes() == zip_bytes and result.bytes == len(zip_bytes)
    assert _leftovers(tmp_path) == [result.path.name]
    assert find_archive(tmp_path, DAY, "BTCUSDT") == result.path


def test_download_falls_back_to_500_on_404(tmp_path, server, zip_bytes):
    server.files[_url_path(500)] = zip_bytes
    result = download_archive(DAY, "BTCUSDT", tmp_path, server.base_url)
    assert result.path.name == "2025-03-14_BTCUSDT_ob500.data.zip"
    assert server.requests == [_url_path(200), _url_path(500)]
    assert _leftovers(tmp_path) == [result.path.name]


def test_dropped_connection_leaves_no_archive(tmp_path, server, zip_bytes):
    server.files[_url_path(200)] = zip_bytes
    server.drop_after[_url_path(200)] = len(zip_bytes) // 2
    with pytest.raises(DownloadError, match=r"127\.0\.0\.1"):
        download_archive(DAY, "BTCUSDT", tmp_path, server.base_url, timeout_s=10)
    assert _leftovers(tmp_path) == []  # neither the archive name nor the temporary file
    assert find_archive(tmp_path, DAY, "BTCUSDT") is None


def test_a_body_that_is_not_a_zip_is_refused(tmp_path, server):
    server.files[_url_path(200)] = b"<html>maintenance</html>"
    with pytest.raises(DownloadError, match="not a readable ZIP"):
        download_archive(DAY, "BTCUSDT", tmp_path, server.base_url)
    assert _leftovers(tmp_path) == []


def test_missing_everywhere_is_not_found(tmp_path, server):
    with pytest.raises(ArchiveNotFoundError, match=r"ob200.*404.*ob500.*404"):
        download_archive(DAY, "BTCUSDT", tmp_path, server.base_url)
    assert _leftovers(tmp_path) == []


def test_unreachable_server_is_a_download_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError):
        download_archive(DAY, "BTCUSDT", tmp_path, f"http://127.0.0.1:{port}/x", timeout_s=5)
    assert _leftovers(tmp_path) == []
