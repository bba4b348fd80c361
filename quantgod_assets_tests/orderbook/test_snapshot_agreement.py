"""The replayed book checks itself against Bybit's snapshots, on generated days.

A generated day untouched agrees with its mid-file (restart) and closing (next day's) snapshots;
the same day with one delta doctored before the restart makes `snapshot_agreement` warn, naming
the first disagreeing level. The figures reach the Parquet metadata, the `EtlSummary` and a
checks-only run of the written file.
"""

from __future__ import annotations

import datetime as dt
import json
import zipfile
from pathlib import Path

import polars as pl
import pytest

from quantgod_assets.orderbook.etl import convert_day
from quantgod_assets.orderbook.quality import (
    CHECK_NAMES,
    WARN,
    SnapshotAgreement,
    SnapshotDisagreement,
    check_snapshot_agreement,
    run_checks,
)
from quantgod_assets.orderbook.synthetic import generate_day

DAY = dt.date(2025, 3, 14)
SHORT_S = 600  # the restart comes at 75 % of it (synthetic.fault_times)
DOCTORED_SIZE = "12345.678"


@pytest.fixture(scope="module")
def restart_day(tmp_path_factory) -> Path:
    return generate_day(DAY, tmp_path_factory.mktemp("restart"), seed=5, faults=("restart",), duration_s=SHORT_S)


def _lines(path: Path) -> list[bytes]:
    with zipfile.ZipFile(path) as archive:
        data = archive.read(archive.namelist()[0])
    return [line for line in data.split(b"\r\n") if line]


def test_a_generated_day_untouched_agrees_with_its_restart_snapshot(restart_day, tmp_path):
    summary = convert_day(restart_day, tmp_path / "day.parquet")
    c = summary.counts
    assert c["n_snapshots"] == 2 and c["snapshots_compared"] == 1
    assert (c["snapshots_agreeing"], c["snapshots_disagreeing"]) == (1, 0)
    assert summary.snapshots == SnapshotAgreement(1, 1, 0, 0, None)
    assert "snapshots agree 1/1" in summary.line()
    meta = pl.read_parquet_metadata(tmp_path / "day.parquet")
    assert meta["quantgod.snapshots.compared"] == "1" and meta["quantgod.snapshots.disagreeing"] == "0"
    assert meta["quantgod.snapshots.agreeing"] == "1" and meta["quantgod.snapshots.after_repair"] == "0"
    assert meta["quantgod.snapshots.first_disagreement"] == "null"
    checks = run_checks(tmp_path / "day.parquet")  # a checks-only run reads the figures from the file
    assert [c.name for c in checks] == list(CHECK_NAMES)
    snap = checks[-1]
    assert snap.passed and snap.severity == WARN and "agreed with all 1 snapshot(s)" in snap.description


def test_a_full_day_agrees_with_its_restart_and_closing_snapshots(tmp_path):
    path = generate_day(DAY, tmp_path, rate_ms=5000, seed=6, faults=("restart", "crossed"))
    summary = convert_day(path, tmp_path / "day.parquet")
    c = summary.counts
    assert c["messages_after_day"] == 1  # the next day's opening snapshot, compared, not applied
    assert (c["snapshots_compared"], c["snapshots_agreeing"], c["snapshots_disagreeing"]) == (2, 2, 0)


def test_a_doctored_delta_before_the_restart_makes_the_check_warn(restart_day, tmp_path):
    lines = _lines(restart_day)
    messages = [json.loads(line) for line in lines]
    restart = next(i for i, m in enumerate(messages) if i > 0 and m["type"] == "snapshot")
    # the last delta before the restart that sets a level (not a delete): one size string changed
    at, side_key, j = next(
        (i, key, j) for i in range(restart - 1, 0, -1) for key in ("b", "a")
        for j, (_, size) in enumerate(messages[i]["data"][key]) if float(size) != 0
    )
    price, bybit_size = messages[at]["data"][side_key][j]
    messages[at]["data"][side_key][j][1] = DOCTORED_SIZE
    lines[at] = json.dumps(messages[at], separators=(",", ":")).encode()
    snapshot_side = messages[restart]["data"][side_key]
    level = next(i for i, (p, _) in enumerate(snapshot_side) if float(p) == float(price))
    assert float(snapshot_side[level][1]) == float(bybit_size)  # the snapshot holds the true size
    source = tmp_path / "doctored.jsonl"
    source.write_bytes(b"\r\n".join(lines) + b"\r\n")

    summary = convert_day(source, tmp_path / "day.parquet", day=DAY, symbol="BTCUSDT")
    side = "bid" if side_key == "b" else "ask"
    expected = SnapshotDisagreement(
        ts_ms=messages[restart]["ts"], side=side, level=level, ours_price=float(price),
        ours_size=float(DOCTORED_SIZE), bybit_price=float(price), bybit_size=float(bybit_size),
        repair_since_previous_snapshot=False,
    )
    assert summary.snapshots == SnapshotAgreement(1, 0, 1, 0, expected)

    for checks in (run_checks(tmp_path / "day.parquet"),  # from the file's metadata
                   run_checks(pl.read_parquet(tmp_path / "day.parquet"), snapshots=summary.snapshots)):
        snap = checks[-1]
        assert snap.name == "snapshot_agreement" and not snap.passed and snap.severity == WARN
        assert not snap.failed_error  # a warning: never blocks the day
        text = snap.description
        assert "disagreed with 1 of 1 snapshot(s)" in text
        assert f"{side} level {level} at {expected.time_text()}" in text
        assert f"ours {float(price)!r} x {float(DOCTORED_SIZE)!r}" in text
        assert f"Bybit's {float(price)!r} x {float(bybit_size)!r}" in text
        assert "no crossed-book repair since the previous snapshot" in text
        assert snap.metadata["snapshots_disagreeing"] == 1
        assert snap.metadata["first_disagreement"]["level"] == level
        assert snap.details_md is not None and side in snap.details_md


def test_the_check_without_figures_or_without_a_compared_snapshot_passes_and_says_so():
    none = check_snapshot_agreement(None)
    assert none.passed and "no snapshot comparison recorded" in none.description
    zero = check_snapshot_agreement(SnapshotAgreement(0, 0, 0))
    assert zero.passed and "no snapshot compared" in zero.description


def test_the_figures_survive_the_parquet_metadata_round_trip():
    first = SnapshotDisagreement(1_741_910_400_123, "ask", 7, None, None, 84325.1, 0.512, True)
    figures = SnapshotAgreement(3, 1, 2, 1, first)
    meta = figures.parquet_metadata()
    assert set(meta) == {"quantgod.snapshots.compared", "quantgod.snapshots.agreeing",
                         "quantgod.snapshots.disagreeing", "quantgod.snapshots.after_repair",
                         "quantgod.snapshots.first_disagreement"}
    assert SnapshotAgreement.from_parquet_metadata(meta) == figures
    assert SnapshotAgreement.from_parquet_metadata({k.encode(): v.encode() for k, v in meta.items()}) == figures
    assert SnapshotAgreement.from_parquet_metadata({"quantgod.symbol": "BTCUSDT"}) is None
    warned = check_snapshot_agreement(figures)
    assert not warned.passed
    assert "a crossed-book repair removed levels since the previous snapshot" in warned.description
    assert "ask level 7 at 2025-03-14 00:00:00.123 UTC: ours none, Bybit's 84325.1 x 0.512" in warned.description
