"""The daily-stage runner and the plain stages, without Dagster."""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import zipfile
from functools import partial

import polars as pl

from quantgod_assets.daily import labels as label_stage
from quantgod_assets.daily.outcome import DayOutcome, describe_failures
from quantgod_assets.daily.runner import run_stage
from quantgod_assets.labelling import combine_distributions, label_suffix, labelled_distribution
from quantgod_assets.orderbook.quality import CheckOutcome
from quantgod_assets.settings import load_settings

from .builders import write_pre_days

DAY = dt.date(2025, 3, 14)


def _day_or_die(day: dt.date, doomed: dt.date) -> DayOutcome:
    """A stage whose worker is killed (as the OOM killer does) on `doomed`."""
    if day == doomed:
        os.kill(os.getpid(), signal.SIGKILL)
    outcome = DayOutcome(day)
    outcome.log(logging.INFO, f"done {day}")
    return outcome


def _records(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_a_killed_worker_fails_only_its_own_day(caplog):
    days = [DAY + dt.timedelta(days=k) for k in range(5)]
    log = logging.getLogger("quantgod.test.runner")
    with caplog.at_level(logging.INFO, logger=log.name):
        outcomes = run_stage(days, partial(_day_or_die, doomed=days[2]), workers=2, log=log)
    assert [o.day for o in outcomes] == days
    assert [o.reason is None for o in outcomes] == [True, True, False, True, True]
    assert outcomes[2].reason == "worker killed (signal 9; out of memory?)"
    messages = _records(caplog)
    assert {f"done {d}" for d in days if d != days[2]} <= set(messages)
    assert "Done: 4 of 5 day(s) succeeded" in " ".join(messages)
    assert f"- {days[2]}: worker killed (signal 9; out of memory?)" in describe_failures(outcomes)


def test_a_failed_blocking_check_is_the_days_reason_a_warning_is_not():
    warn = CheckOutcome("gaps", passed=False, severity="WARN", description="2% invalid")
    error = CheckOutcome("schema", passed=False, severity="ERROR", description="1439 rows")
    informative = CheckOutcome("not_crossed", passed=False, severity="ERROR", description="1 crossed minute")
    outcome = DayOutcome(DAY, checks=[warn, informative], blocking=("gaps", "schema"))
    assert outcome.produced and outcome.reason is None  # a WARN and a non-blocking ERROR
    outcome.checks.append(error)
    assert outcome.reason == "check schema failed: 1439 rows"
    assert DayOutcome(DAY).fail("bad zip", "x.zip").lines == [(logging.ERROR, "Failed: x.zip: bad zip")]


def test_the_label_stage_on_a_pool_matches_the_duckdb_distribution(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTGOD_DATA_DIR", str(tmp_path))
    settings = load_settings()
    days = [DAY + dt.timedelta(days=k) for k in range(3)]
    write_pre_days(settings.paths.preprocessed_dir, days)
    missing = days[-1] + dt.timedelta(days=1)
    outcomes = run_stage([*days, missing], partial(label_stage.produce_day, settings=settings), workers=2,
                         log=logging.getLogger("quantgod.test.labels"))
    assert [o.produced for o in outcomes] == [True, True, True, False]
    assert "no preprocessed book" in outcomes[-1].reason
    # the last book day has no BUY minute: checked, failed its blocking check, never published
    assert [o.published for o in outcomes] == [True, True, False, False]
    assert outcomes[2].reason.startswith("check class_balance failed") and not outcomes[2].path.exists()
    assert outcomes[2].rejected.is_file() and str(outcomes[2].rejected) in outcomes[2].reason
    per_day = [class_distribution_of(o) for o in outcomes[:2]]
    folder = settings.paths.labelled_dir / label_suffix()
    assert labelled_distribution(folder) == combine_distributions(per_day)
    assert sorted(p.name for p in folder.glob("*")) == [f"{d}.parquet" for d in days[:2]] + ["rejected"]
    assert not list(folder.glob(".*"))  # nothing staged left
    first = outcomes[0]
    assert first.metadata["next_day_present"] is True and outcomes[2].metadata["next_day_present"] is False
    assert first.metadata["rows"] == pl.read_parquet(first.path).height == 1440
    [check] = first.checks
    assert check.name == "class_balance" and check.metadata["labelled_rows"] == 1440


def class_distribution_of(outcome: DayOutcome) -> dict:
    return outcome.stats["distribution"]


def test_a_write_clears_the_temp_files_a_killed_write_left_and_follows_the_umask(tmp_path):
    from quantgod_assets.storage import HOST, write_parquet_atomic

    output = tmp_path / "2025-03-14.parquet"
    stale = tmp_path / f".2025-03-14.parquet~{2**22 + 7}@{HOST}~k1ll3d.tmp"  # a kill -9 during the write
    stale.write_bytes(b"half a file")
    other_day = tmp_path / f".2025-03-15.parquet~{2**22 + 7}@{HOST}~abc.tmp"  # another day's: not ours
    other_day.write_bytes(b"")
    write_parquet_atomic(pl.DataFrame({"x": [1.0]}), output, {"quantgod.date": "2025-03-14"})
    assert not stale.exists() and other_day.exists()
    mask = os.umask(0o022)
    os.umask(mask)
    assert output.stat().st_mode & 0o777 == 0o666 & ~mask


def test_the_line_cap_reaches_the_engine_from_etl_yaml(tmp_path, monkeypatch):
    from quantgod_assets.daily import book as book_stage

    from .builders import msg

    day = DAY
    start_ms = int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp() * 1000)
    lines = [msg("snapshot", start_ms, [["100.0", "1"]], [["100.5", "1"]], u=1),
             msg("delta", start_ms + 500, [["99.5", "2"]], [], u=2)]
    root = tmp_path / "raw"
    (root / "2025").mkdir(parents=True)
    with zipfile.ZipFile(root / "2025" / f"{day}_BTCUSDT_ob200.data.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{day}_BTCUSDT_ob200.data", "\n".join(lines) + "\n")
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "etl.yaml").write_text("max_line_bytes: 100\nchecks: {gap_fail_share: 1.0}\n")
    monkeypatch.setenv("QUANTGOD_CONFIG_DIR", str(configs))
    monkeypatch.setenv("QUANTGOD_RAW_ROOT", str(root))
    monkeypatch.setenv("QUANTGOD_DATA_DIR", str(tmp_path / "data"))
    settings = load_settings()
    assert settings.etl.max_line_bytes == 100
    outcome = book_stage.produce_day(day, settings, plot=False)
    assert outcome.error and "longer than" in outcome.error  # the snapshot line is over 100 bytes


def test_stale_files_of_a_dead_writer_go_a_live_writers_stay(tmp_path):
    import subprocess
    import sys

    from quantgod_assets.daily.outcome import staging_path
    from quantgod_assets.storage import HOST

    final = tmp_path / "2025-03-14.parquet"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)  # a process that has exited: its leftovers are stale
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        left = [tmp_path / f".{final.name}~{dead_pid}@{HOST}~abc.staged",
                tmp_path / f"..{final.name}~{dead_pid}@{HOST}~abc.staged~{dead_pid}@{HOST}~x.tmp"]
        live = [tmp_path / f".{final.name}~{alive.pid}@{HOST}~def.staged",
                tmp_path / f".{final.name}~{dead_pid}@another-host~ghi.tmp"]  # on a shared mount: recent
        other_day = tmp_path / f".2025-03-15.parquet~{dead_pid}@{HOST}~abc.staged"
        for path in [*left, *live, other_day]:
            path.write_bytes(b"")
        staged = staging_path(final)
        assert not any(p.exists() for p in left)
        assert all(p.exists() for p in live) and other_day.exists()
        assert staged.name.startswith(f".{final.name}~{os.getpid()}@{HOST}~") and staged != staging_path(final)
    finally:
        alive.kill()
        alive.wait()
