"""The streaming reader: ZIP members inflated from the archive's bytes, checked as zipfile would,
into buffers the engine reuses."""

from __future__ import annotations

import gzip
import struct
import zipfile

import pytest

from quantgod_assets.orderbook import reader
from quantgod_assets.orderbook.reader import ChunkPool, OrderBookInputError, iter_chunks, pooled_chunks

NAME = "2025-03-14_BTCUSDT_ob200.data"
# varied, compressible text, long enough to span many inflate pieces
TEXT = b"".join(
    b'{"ts":%d,"type":"delta","data":{"b":[["%d.10","0.%03d"]],"a":[],"u":%d}}\r\n'
    % (1741910400000 + i, 84000 + i % 977, i % 1000, i)
    for i in range(40_000)
)


def write_zip(path, data=TEXT, compression=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        archive.writestr(NAME, data)
    return path


def read_all(path, chunk_bytes=1 << 16):
    chunks = list(iter_chunks(path, chunk_bytes))
    assert all(0 < len(chunk) <= chunk_bytes for chunk in chunks)
    return b"".join(chunks)


@pytest.mark.parametrize("compression", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED, zipfile.ZIP_BZIP2])
def test_member_bytes_equal_zipfiles_in_bounded_chunks(tmp_path, compression):
    path = write_zip(tmp_path / f"{NAME}.zip", compression=compression)
    assert read_all(path) == TEXT


def test_a_highly_compressible_member_still_comes_in_bounded_chunks(tmp_path):
    path = write_zip(tmp_path / f"{NAME}.zip", data=b" " * (20 << 20))  # ~1000:1
    assert read_all(path, chunk_bytes=1 << 20) == b" " * (20 << 20)


def test_gzip_and_plain_files(tmp_path):
    gz = tmp_path / "day.jsonl.gz"
    gz.write_bytes(gzip.compress(TEXT))
    plain = tmp_path / "day.data"
    plain.write_bytes(TEXT)
    assert read_all(gz) == TEXT
    assert read_all(plain) == TEXT


def _patch_central_directory(path, offset_in_entry, fmt, value):
    """Rewrites one field of the (only) central directory entry."""
    raw = bytearray(path.read_bytes())
    entry = raw.rindex(b"PK\x01\x02")
    struct.pack_into(fmt, raw, entry + offset_in_entry, value)
    path.write_bytes(bytes(raw))


def test_a_wrong_crc_names_the_file_and_member(tmp_path):
    path = write_zip(tmp_path / f"{NAME}.zip")
    crc = zipfile.ZipFile(path).infolist()[0].CRC
    _patch_central_directory(path, 16, "<I", crc ^ 1)
    with pytest.raises(OrderBookInputError, match=rf"{path}: .*{NAME}.*bad CRC-32"):
        read_all(path)


def test_a_wrong_size_in_the_directory_is_an_error(tmp_path):
    path = write_zip(tmp_path / f"{NAME}.zip")
    _patch_central_directory(path, 24, "<I", len(TEXT) + 5)
    with pytest.raises(OrderBookInputError, match=rf"{path}: .*bytes inflated"):
        read_all(path)


def test_corrupt_deflate_data_is_an_error(tmp_path):
    path = write_zip(tmp_path / f"{NAME}.zip")
    raw = bytearray(path.read_bytes())
    start = 30 + len(NAME)
    for i in range(start + 100, start + 400):
        raw[i] ^= 0x5A
    path.write_bytes(bytes(raw))
    with pytest.raises(OrderBookInputError, match=str(path)):
        read_all(path)


def test_a_member_cut_short_with_its_directory_kept_is_an_error(tmp_path):
    # the compressed data loses its second half; the directory (moved up) still claims it all
    path = write_zip(tmp_path / f"{NAME}.zip")
    raw = path.read_bytes()
    info = zipfile.ZipFile(path).infolist()[0]
    data_start = 30 + len(NAME)
    directory = raw[data_start + info.compress_size:]
    cut = raw[: data_start + info.compress_size // 2]
    moved = bytearray(cut + directory)
    end = moved.rindex(b"PK\x05\x06")
    struct.pack_into("<I", moved, end + 16, len(cut))  # the directory's new offset
    path.write_bytes(bytes(moved))
    with pytest.raises(OrderBookInputError, match=str(path)):
        read_all(path)


def test_a_zip_without_its_directory_is_an_error(tmp_path):
    path = write_zip(tmp_path / f"{NAME}.zip")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(OrderBookInputError, match=rf"{path}: corrupt or truncated ZIP"):
        read_all(path)


def _all_kinds(tmp_path):
    gz = tmp_path / "day.jsonl.gz"
    gz.write_bytes(gzip.compress(TEXT))
    plain = tmp_path / "day.data"
    plain.write_bytes(TEXT)
    zips = [write_zip(tmp_path / f"{kind}_{NAME}.zip", compression=kind)
            for kind in (zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED, zipfile.ZIP_BZIP2)]
    return [*zips, gz, plain]


def test_pooled_chunks_reuse_their_buffers_and_give_every_byte(tmp_path):
    for path in _all_kinds(tmp_path):
        pool = ChunkPool(chunk_bytes=1 << 16)
        seen, parts = set(), []
        for chunk in pooled_chunks(path, pool):
            assert isinstance(chunk, memoryview) and 0 < len(chunk) <= 1 << 16
            parts.append(bytes(chunk))
            seen.add(id(chunk.obj))
            pool.give_back(chunk)
        assert b"".join(parts) == TEXT, path
        assert len(parts) > 10 and len(seen) <= 2, path  # refilled, not allocated per chunk


def test_a_chunk_kept_by_the_consumer_is_never_refilled(tmp_path):
    path = write_zip(tmp_path / f"{NAME}.zip")
    kept = [chunk for chunk in pooled_chunks(path, ChunkPool(chunk_bytes=1 << 16))]  # none given back
    assert len({id(chunk.obj) for chunk in kept}) == len(kept)
    assert b"".join(bytes(chunk) for chunk in kept) == TEXT


def test_the_public_gzip_reader_stands_in_with_the_same_checks(tmp_path, monkeypatch):
    monkeypatch.setattr(reader, "_GZIP_READER", None)
    for path in _all_kinds(tmp_path):
        assert read_all(path) == TEXT, path
    path = write_zip(tmp_path / f"bad_{NAME}.zip")
    _patch_central_directory(path, 16, "<I", zipfile.ZipFile(path).infolist()[0].CRC ^ 1)
    with pytest.raises(OrderBookInputError, match=rf"{path}: .*{NAME}.*bad CRC-32"):
        read_all(path)
