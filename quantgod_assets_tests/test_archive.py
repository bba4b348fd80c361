from __future__ import annotations

import datetime as dt
import io
import socket
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from quantgod_assets.archive import (
    ArchiveNotFoundError,
    CorruptArchiveError,
    DownloadError,
    InvalidSymbolError,
    archive_name,
    archive_url,
    check_symbol,
    download_archive,
    find_archive,
    quarantine_archive,
    verify_archive,
)

from .builders import ArchiveServer, flip_member_bytes

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
    with ArchiveServer.running() as srv:
        yield srv


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


# ---------------------------------------------------------------------------------------------
# Servers that drip, lie and corrupt: every download ends in bounded time, nothing left behind


def test_a_dripping_server_is_stopped_by_the_deadline(tmp_path, server, zip_bytes):
    server.files[_url_path(200)] = zip_bytes
    server.drip[_url_path(200)] = 0.5  # one byte every 0.5 s: no single read ever times out
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"127\.0\.0\.1.*deadline of 2 s exceeded.*download\.deadline_s"):
        download_archive(DAY, "BTCUSDT", tmp_path, server.base_url, timeout_s=10, deadline_s=2)
    assert time.monotonic() - started < 5
    assert _leftovers(tmp_path) == []  # no .part file, nothing under the archive name


def test_a_stalled_server_is_stopped_by_the_read_timeout(tmp_path, server, zip_bytes):
    server.files[_url_path(200)] = zip_bytes
    server.drip[_url_path(200)] = 30  # headers, then silence
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"127\.0\.0\.1.*no data for 0\.5 s \(download\.timeout_s"):
        download_archive(DAY, "BTCUSDT", tmp_path, server.base_url, timeout_s=0.5, deadline_s=60)
    assert time.monotonic() - started < 5
    assert _leftovers(tmp_path) == []


def test_an_announced_size_over_the_cap_is_refused_before_the_body(tmp_path, server, zip_bytes):
    server.files[_url_path(200)] = zip_bytes
    server.announce[_url_path(200)] = 10 << 30  # the server says 10 GiB
    with pytest.raises(DownloadError, match=r"127\.0\.0\.1.*10,737,418,240 bytes.*over the size cap of "
                                            r"2,147,483,648 bytes.*download\.max_bytes"):
        download_archive(DAY, "BTCUSDT", tmp_path, server.base_url, timeout_s=10)
    assert _leftovers(tmp_path) == []


def test_a_body_over_the_cap_without_a_length_is_cut_off(tmp_path, server, zip_bytes):
    server.files[_url_path(200)] = zip_bytes
    server.announce[_url_path(200)] = None  # no Content-Length: the body ends when the server closes
    cap = len(zip_bytes) // 3
    with pytest.raises(DownloadError, match=rf"the body .*over the size cap of {cap:,} bytes"):
        download_archive(DAY, "BTCUSDT", tmp_path, server.base_url, timeout_s=10, max_bytes=cap)
    assert _leftovers(tmp_path) == []
    # the same body under a cap it fits: downloaded (a missing length is not itself a failure)
    result = download_archive(DAY, "BTCUSDT", tmp_path, server.base_url, max_bytes=len(zip_bytes))
    assert result.path.read_bytes() == zip_bytes


def test_a_corrupt_member_behind_an_intact_directory_is_refused(tmp_path, server, zip_bytes):
    bad = flip_member_bytes(zip_bytes)
    with zipfile.ZipFile(io.BytesIO(bad)) as archive:
        assert len(archive.namelist()) == 1  # the directory opens: only inflating finds it
    server.files[_url_path(200)] = bad
    with pytest.raises(DownloadError, match=r"127\.0\.0\.1.*the downloaded archive is corrupt"):
        download_archive(DAY, "BTCUSDT", tmp_path, server.base_url)
    assert _leftovers(tmp_path) == []
    assert server.requests == [_url_path(200)]  # a corrupt ob200 is a failure, not a 404: no ob500 tried


def test_verify_archive_inflates_the_member_to_the_end(tmp_path, zip_bytes):
    good = _touch(tmp_path / archive_name(DAY, "BTCUSDT", 200), zip_bytes)
    assert verify_archive(good) > len(zip_bytes)
    bad = _touch(tmp_path / "bad" / archive_name(DAY, "BTCUSDT", 200), flip_member_bytes(zip_bytes))
    with pytest.raises(CorruptArchiveError, match="corrupt"):
        verify_archive(bad)
    short = _touch(tmp_path / "short" / archive_name(DAY, "BTCUSDT", 200), zip_bytes[: len(zip_bytes) // 2])
    with pytest.raises(CorruptArchiveError, match="corrupt or truncated"):
        verify_archive(short)


def test_quarantine_moves_the_archive_out_of_the_search(tmp_path, zip_bytes):
    path = _touch(tmp_path / "2025" / archive_name(DAY, "BTCUSDT", 200), b"bad")
    moved = quarantine_archive(path, tmp_path)
    assert moved == tmp_path / "corrupt" / f"{path.name}.corrupt" and moved.read_bytes() == b"bad"
    assert not path.exists() and find_archive(tmp_path, DAY, "BTCUSDT") is None
    again = quarantine_archive(_touch(path, b"worse"), tmp_path)  # a second one keeps the first
    assert again.name == f"{path.name}.2.corrupt" and moved.read_bytes() == b"bad"


# ---------------------------------------------------------------------------------------------
# The symbol: part of paths and URLs, so checked before either is built


@pytest.mark.parametrize("symbol", ["x/../../../outside/PWNED", "../BTCUSDT", "BTC/USDT", "btcusdt", "B", "",
                                    "BTCUSDT\n", "BTC USDT", "A" * 31, "BTCUSDT%2F.."])
def test_a_symbol_outside_the_rule_is_refused_before_any_path_or_url(tmp_path, server, symbol):
    for build in (lambda: archive_name(DAY, symbol, 200), lambda: archive_url(server.base_url, DAY, symbol, 200),
                  lambda: find_archive(tmp_path, DAY, symbol),
                  lambda: download_archive(DAY, symbol, tmp_path / "root", server.base_url)):
        with pytest.raises(InvalidSymbolError, match=r"\^\[A-Z0-9\]\{2,30\}\$"):
            build()
    assert server.requests == []  # no request carried it
    assert _leftovers(tmp_path) == [] and not (tmp_path / "root").exists()


def test_real_symbols_pass_the_rule():
    for symbol in ("BTCUSDT", "ETHUSDT", "1000PEPEUSDT", "ETHPERP"):
        assert check_symbol(symbol) == symbol
