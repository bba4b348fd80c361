"""The real Dagster CLI in a subprocess: what a user types, against a persistent instance."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys

import dagster as dg
import polars as pl

from quantgod_assets.launch import materialize_range

from .builders import BAD_DAY, DAY1, DAY2, REPO

BOOK = dg.AssetKey("preprocessed_book")


def materializations(env) -> dict[str, list[str]]:
    """partition -> run ids of its materializations, read from the instance the CLI wrote."""
    with dg.DagsterInstance.from_config(str(env.dagster_home)) as instance:
        records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=BOOK), limit=100).records
        out: dict[str, list[str]] = {}
        for record in records:
            out.setdefault(record.partition_key, []).append(record.run_id)
        return out


def check_partitions(env) -> set[tuple[str, str]]:
    """(check name, partition) of every check evaluation the CLI recorded."""
    with dg.DagsterInstance.from_config(str(env.dagster_home)) as instance:
        found = set()
        for record in instance.get_run_records():
            for entry in instance.all_logs(record.dagster_run.run_id,
                                           of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
                data = entry.dagster_event.event_specific_data
                found.add((data.check_name, data.partition))
        return found


def run(env, start, end=None, **kwargs) -> subprocess.CompletedProcess:
    return materialize_range(start, end, env=env.env(), cwd=env.root, capture=True, timeout_s=240, **kwargs)


def test_definitions_validate():
    done = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-m", "quantgod_assets.definitions"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Validation successful" in done.stdout + done.stderr


def test_cli_one_day(qg_env):
    qg_env.set_etl(gap_warn_share=0.01, gap_fail_share=0.10)
    # a ten-minute day would fail the 10 % gap limit: run on a copy of the configs with it relaxed
    done = run(qg_env, DAY1, config_overrides={"etl.yaml": {"checks": {"gap_fail_share": 1.0}}})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert pl.read_parquet(qg_env.preprocessed(DAY1)).height == 1440
    assert list(materializations(qg_env)) == ["2025-03-14"]
    [log] = list((qg_env.logs_dir / "etl").glob("etl_*.log"))
    text = log.read_text()
    assert "[INFO]  Processing: 2025-03-14_BTCUSDT_ob200.data.zip" in text
    assert "[INFO]  Rows after resample: 1440" in text
    assert re.search(rf"\[INFO\]  Saved: {re.escape(qg_env.preprocessed(DAY1).as_posix())} \(\d+\.\d MB\)", text)
    assert "[WARNING] Significant gaps" in text


def test_cli_two_day_range_is_one_run(qg_env):
    done = run(qg_env, DAY1, DAY2)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for day in (DAY1, DAY2):
        assert pl.read_parquet(qg_env.preprocessed(day)).height == 1440
    found = materializations(qg_env)
    assert sorted(found) == ["2025-03-14", "2025-03-15"]
    assert len({run_id for ids in found.values() for run_id in ids}) == 1  # one run, both partitions
    assert "2 worker(s)" in done.stdout + done.stderr or "worker(s)" in done.stdout + done.stderr


def test_cli_range_with_a_corrupt_day_finishes_the_others(qg_env):
    done = run(qg_env, DAY1, BAD_DAY)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "1 of 3 day(s) failed" in output
    assert "2025-03-16" in output and "corrupt or truncated ZIP" in output
    assert qg_env.preprocessed(DAY1).is_file() and qg_env.preprocessed(DAY2).is_file()
    assert not qg_env.preprocessed(BAD_DAY).exists()
    assert sorted(materializations(qg_env)) == ["2025-03-14", "2025-03-15"]
    checked = check_partitions(qg_env)  # the good days keep their check results in a failed run
    assert {("schema", "2025-03-14"), ("schema", "2025-03-15")} <= checked
    assert not any(partition == "2025-03-16" for _, partition in checked)
    text = next((qg_env.logs_dir / "etl").glob("etl_*.log")).read_text()
    assert "[ERROR] Failed: 2025-03-16_BTCUSDT_ob200.data.zip" in text


def test_cli_blocking_check_failure_ends_the_run_failed(qg_env):
    # a first range with the gap limit relaxed: both days published and recorded
    qg_env.set_etl(gap_warn_share=0.01, gap_fail_share=0.10)
    relaxed = {"etl.yaml": {"checks": {"gap_fail_share": 1.0}}}
    assert run(qg_env, DAY1, DAY2, config_overrides=relaxed).returncode == 0
    published = {day: qg_env.preprocessed(day).read_bytes() for day in (DAY1, DAY2)}
    first = materializations(qg_env)
    # default limits: a ten-minute day is ~99 % gap, above the 10 % limit
    done = run(qg_env, DAY1, DAY2)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "2 of 2 day(s) failed" in output and "check gaps failed" in output
    # neither day replaced the published one nor was recorded again; the rejected outputs are kept
    assert materializations(qg_env) == first and sorted(first) == ["2025-03-14", "2025-03-15"]
    for day, data in published.items():
        path = qg_env.preprocessed(day)
        assert path.read_bytes() == data and (path.parent / "rejected" / path.name).is_file()
        assert f"rejected output: {path.parent / 'rejected' / path.name}" in output


def test_cli_missing_day_and_missing_root_fail_in_one_line(qg_env, tmp_path):
    """Dagster prints a failure's stack under STEP_FAILURE and again under RUN_FAILURE, whatever
    the asset does; what the asset controls is a one-line reason and no chained cause, which would
    add a second stack to each (a missing root: 86 lines and 4 stacks before, 64 lines and 2 now)."""
    from .builders import make_env

    missing_day = run(qg_env, "2025-05-01")
    no_root_env = make_env(tmp_path / "no_root", {})  # no archives: the archive root was never made
    assert not no_root_env.raw_root.exists()
    missing_root = run(no_root_env, DAY1)
    for done, words in [
        (missing_day, ("2025-05-01: no ", "2025-05-01_BTCUSDT_ob200.data.zip", str(qg_env.raw_root))),
        (missing_root, (f"the archive root QUANTGOD_RAW_ROOT={no_root_env.raw_root} does not exist",)),
    ]:
        output = done.stdout + done.stderr
        lines = output.splitlines()
        assert done.returncode != 0, output
        failures = [n for n, line in enumerate(lines) if line.startswith("dagster._core.definitions.events.Failure: ")]
        assert len(failures) == 2, output  # the step's failure, then the run's
        step, run_ = (lines[n] for n in failures)
        assert step == run_ and all(word in step for word in words), output
        assert "2025-05-01: 2025-05-01" not in step  # the day said once
        assert all(lines[n + 1] == "" for n in failures), output  # the reason is one line
        stacks = re.findall(r"Stack Trace:\n((?:  .*\n)+)", output)
        assert len(stacks) == 2 and stacks[0] == stacks[1], output  # one stack, printed twice
        assert "Traceback" not in output and "caused by" not in output and "during handling" not in output
    assert not qg_env.preprocessed(dt.date(2025, 5, 1)).exists()
