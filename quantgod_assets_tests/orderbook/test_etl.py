"""One file in, one Parquet out: file kinds, names, bad input and the `quantgod etl` command."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from quantgod_assets.orderbook.etl import convert_day, gap_intervals, parse_archive_name
from quantgod_assets.orderbook.reader import OrderBookInputError
from quantgod_assets.orderbook.replay import day_start_ms
from quantgod_assets.orderbook.schema import book_columns

from ..builders import msg

DAY = dt.date(2025, 3, 14)
T0 = day_start_ms(DAY)
LINES = [msg("snapshot", T0 + 500, bids=[("100.0", "1"), ("99.9", "2")], asks=[("100.1", "3")], u=1)] + [
    msg("delta", T0 + 1000 * s, bids=[("100.0", str(1 + s % 5))], u=s + 1) for s in range(1, 400)
]
TEXT = ("\r\n".join(LINES) + "\r\n").encode()
NAME = "2025-03-14_BTCUSDT_ob200.data"


def write_zip(folder: Path, data: bytes = TEXT, name: str = NAME) -> Path:
    path = folder / f"{name}.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, data)
    return path


def test_archive_names():
    assert parse_archive_name("x/2025-03-14_BTCUSDT_ob200.data.zip") == (DAY, "BTCUSDT", 200)
    assert parse_archive_name("2024-12-01_XRPUSDT_ob500.data.zip") == (dt.date(2024, 12, 1), "XRPUSDT", 500)
    assert parse_archive_name("2026-04-22_BTCUSDT_spot_ob200_first300s.jsonl.gz")[:2] == (
        dt.date(2026, 4, 22), "BTCUSDT")
    with pytest.raises(OrderBookInputError, match=r"book\.zip.*no date"):
        parse_archive_name("/data/book.zip")


@pytest.mark.parametrize("kind", ["zip", "gz", "plain"])
def test_every_packing_gives_the_same_day(tmp_path, kind):
    if kind == "zip":
        source = write_zip(tmp_path)
    elif kind == "gz":
        source = tmp_path / f"{NAME}.jsonl.gz"
        source.write_bytes(gzip.compress(TEXT))
    else:
        source = tmp_path / NAME
        source.write_bytes(TEXT)
    out = tmp_path / "out" / "day.parquet"
    summary = convert_day(source, out)
    frame = pl.read_parquet(out)
    assert frame.height == 1440 and frame.columns == book_columns()
    assert frame["ts"][0] == dt.datetime(2025, 3, 14, tzinfo=dt.UTC)
    assert frame["bid_px_0"][0] == 100.0 and frame["bid_sz_0"][0] == 5.0  # second 59: u=60 → 1+59%5
    assert frame["valid_seconds"][:6].to_list() == [60] * 6 and frame["valid_seconds"][8] == 0
    assert summary.counts["n_messages"] == 400 and summary.rows == 1440
    meta = pq.read_schema(out).metadata
    assert meta[b"quantgod.symbol"] == b"BTCUSDT"
    assert meta[b"quantgod.source_depth"] == b"200"
    assert json.loads(meta[b"quantgod.counts"])["n_snapshots"] == 1
    assert not list(out.parent.glob("*.tmp"))


def test_gap_intervals_report_long_invalid_runs():
    valid = [True] * 100 + [False] * 59 + [True] + [False] * 120 + [True] * 10
    assert gap_intervals(__import__("numpy").array(valid)) == [("00:02:40", "00:04:40")]


def test_truncated_zip_fails_and_keeps_the_previous_output(tmp_path):
    source = write_zip(tmp_path)
    out = tmp_path / "day.parquet"
    out.write_bytes(b"previous day")
    (tmp_path / "cut").mkdir()
    cut_zip = tmp_path / "cut" / source.name
    cut_zip.write_bytes(source.read_bytes()[: source.stat().st_size * 2 // 3])
    with pytest.raises(OrderBookInputError, match=str(cut_zip)):
        convert_day(cut_zip, out)
    assert out.read_bytes() == b"previous day"
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


def test_crc_corrupt_zip_fails_naming_the_file(tmp_path):
    data = bytearray(TEXT)
    source = tmp_path / f"{NAME}.zip"
    with zipfile.ZipFile(source, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(NAME, bytes(data))
    raw = bytearray(source.read_bytes())
    spot = raw.index(b'"ts":') + 6
    raw[spot] = ord("9") if raw[spot] != ord("9") else ord("8")  # a digit flips: still JSON, bad CRC
    source.write_bytes(bytes(raw))
    with pytest.raises(OrderBookInputError, match=f"{source}.*(CRC|corrupt)"):
        convert_day(source, tmp_path / "out.parquet")
    assert not (tmp_path / "out.parquet").exists()


def test_malformed_line_fails_unless_skipped(tmp_path):
    lines = [*LINES[:10], '{"topic":"orderbook.200.BTCUSDT","ts":', *LINES[10:]]
    source = write_zip(tmp_path, ("\r\n".join(lines) + "\r\n").encode())
    out = tmp_path / "out.parquet"
    with pytest.raises(OrderBookInputError, match=f"{source}: line 11"):
        convert_day(source, out)
    assert not out.exists()
    from quantgod_assets.orderbook.replay import ReplayConfig

    summary = convert_day(source, out, config=ReplayConfig(skip_bad_lines=True))
    assert summary.counts["bad_lines"] == 1 and out.exists()


def test_empty_file_and_no_snapshot(tmp_path):
    with pytest.raises(OrderBookInputError, match="empty"):
        convert_day(write_zip(tmp_path, b""), tmp_path / "a.parquet")
    with pytest.raises(OrderBookInputError, match="no snapshot"):
        convert_day(write_zip(tmp_path, ("\r\n".join(LINES[1:])).encode()), tmp_path / "b.parquet")
    assert not list(tmp_path.glob("*.parquet"))


def test_zip_with_two_members_fails(tmp_path):
    source = tmp_path / f"{NAME}.zip"
    with zipfile.ZipFile(source, "w") as archive:
        archive.writestr("a", TEXT)
        archive.writestr("b", TEXT)
    with pytest.raises(OrderBookInputError, match="exactly one member"):
        convert_day(source, tmp_path / "out.parquet")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "quantgod_assets.cli", *args],
                          capture_output=True, text=True, timeout=300)


def test_cli_etl_prints_one_summary_line(tmp_path):
    source = write_zip(tmp_path)
    out = tmp_path / "out.parquet"
    done = run_cli("etl", str(source), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip().splitlines()) == 1
    assert "1440 rows" in done.stdout and "BTCUSDT" in done.stdout
    assert out.exists()


def test_cli_etl_names_the_bad_file(tmp_path):
    source = tmp_path / "book.jsonl"
    source.write_bytes(TEXT)
    done = run_cli("etl", str(source), "-o", str(tmp_path / "out.parquet"))
    assert done.returncode == 2 and "book.jsonl" in done.stderr and "no date" in done.stderr
    done = run_cli("etl", str(source), "-o", str(tmp_path / "out.parquet"), "--date", "2025-03-14",
                   "--symbol", "BTCUSDT")
    assert done.returncode == 0, done.stderr


def test_a_failed_file_leaves_no_reader_or_parser_thread_behind(tmp_path):
    import threading

    lines = LINES[:10] + ["garbage"] + LINES[10:] * 50
    source = write_zip(tmp_path, ("\r\n".join(lines) + "\r\n").encode())
    before = threading.active_count()
    kept = []  # the errors keep their tracebacks, and so every frame, alive: no help from GC
    for _ in range(3):
        with pytest.raises(OrderBookInputError) as caught:
            convert_day(source, tmp_path / "out.parquet")
        kept.append(caught.value)
    assert threading.active_count() == before


def test_encrypted_zip_member_fails_naming_the_file(tmp_path):
    source = write_zip(tmp_path)
    raw = bytearray(source.read_bytes())
    raw[raw.index(b"PK\x03\x04") + 6] |= 1  # general-purpose flag bit 0 ("encrypted"), local header
    raw[raw.index(b"PK\x01\x02") + 8] |= 1  # and central directory
    source.write_bytes(bytes(raw))
    with pytest.raises(OrderBookInputError, match=f"{source}: encrypted ZIP member '{NAME}' is not supported"):
        convert_day(source, tmp_path / "out.parquet")
    assert not (tmp_path / "out.parquet").exists()


def test_output_that_is_the_input_or_no_file_is_refused_before_any_work(tmp_path, monkeypatch):
    import os

    from quantgod_assets.orderbook import etl

    source = write_zip(tmp_path)
    before = source.read_bytes()
    monkeypatch.setattr(etl, "replay_file", lambda *a, **k: pytest.fail("replayed a refused conversion"))
    os.link(source, tmp_path / "hard.zip")
    (tmp_path / "sym.zip").symlink_to(source.name)
    (tmp_path / "folder").mkdir()
    for output, words in [
        (source, "is the input file"),
        (tmp_path / "." / source.name, "is the input file"),
        (tmp_path / "hard.zip", "is the input file"),
        (tmp_path / "sym.zip", "is the input file"),
        (tmp_path / "folder", "is a folder"),
        (Path(os.devnull), "not a regular file"),
        (source / "day.parquet", f"{source} is not a folder"),
    ]:
        with pytest.raises(OrderBookInputError, match=f"^{output}: .*{words}"):
            convert_day(source, output)
    with pytest.raises(OrderBookInputError, match=f"^{tmp_path / 'folder'}: is a folder, not a day's file"):
        convert_day(tmp_path / "folder", tmp_path / "out.parquet")
    assert source.read_bytes() == before and list((tmp_path / "folder").iterdir()) == []
