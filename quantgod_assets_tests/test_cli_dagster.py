"""The real Dagster CLI in a subprocess: what a user types, against a persistent instance."""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import polars as pl
import psutil
import pytest

from quantgod_assets.launch import materialize_range

from .builders import BAD_DAY, DAY1, DAY2, REPO

BOOK = dg.AssetKey(["BTCUSDT_linear", "preprocessed_book"])


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


def _busy_pool_worker(run_pid: int) -> tuple[psutil.Process, Path] | None:
    """A pool worker of the run (a process forked by multiprocessing's forkserver, below the CLI)
    holding a day's archive open, and that archive; None while there is none."""
    try:
        below = psutil.Process(run_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    for process in below:
        try:
            parent = process.parent()
            forked = parent is not None and all(
                "multiprocessing.forkserver" in " ".join(p.cmdline()) for p in (process, parent)
            )
            archives = [Path(f.path) for f in process.open_files() if f.path.endswith(".data.zip")]
        except psutil.Error:  # gone meanwhile
            continue
        if forked and archives:
            return process, archives[0]
    return None


def test_cli_a_worker_killed_mid_range_costs_no_day(tmp_path):
    """`kill -9` on a busy pool worker of a real CLI range run (as the OOM killer would): the pool
    breaks, the days it held unfinished are retried each in a process of its own (the kill does not
    repeat there), so the run succeeds with every day materialized, checked and published, and
    its log says which days were retried."""
    import threading

    from quantgod_assets.orderbook.synthetic import generate_days

    from .builders import make_env

    first = dt.date(2025, 4, 1)
    days = [first + dt.timedelta(days=k) for k in range(3)]
    # three hours of 100 ms messages a day: a worker replays one for a second or two
    paths = generate_days(first, len(days), tmp_path / "archives", seed=9, duration_s=3 * 3600)
    env = make_env(tmp_path / "env", dict(zip(days, paths)))
    finished: dict[str, subprocess.CompletedProcess] = {}

    def go() -> None:
        finished["run"] = run(env, days[0], days[-1], config_overrides={"etl.yaml": {"workers": 2}})

    before = {p.pid for p in psutil.Process().children()}
    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    found = None
    while thread.is_alive() and found is None:
        for child in psutil.Process().children():
            if child.pid not in before:
                found = _busy_pool_worker(child.pid)
                if found:
                    break
        time.sleep(0.02)
    assert found is not None, "the run ended before a pool worker was seen busy with a day"
    worker, archive = found
    killed_day = dt.date.fromisoformat(archive.name[:10])
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(timeout=30)  # not our child: gone, its status is the pool's to read
    assert not worker.is_running()
    thread.join(timeout=240)
    assert not thread.is_alive()

    done = finished["run"]
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "Done: 3 of 3 day(s) succeeded" in output and "worker killed" not in output
    retried = re.search(r"A worker process died \(killed, out of memory\?\) and broke the pool: (\d) day\(s\) "
                        r"retried, each in a process of its own: ([-\d, ]+)", output)
    assert retried is not None, output[-4000:]
    retried_days = [dt.date.fromisoformat(d) for d in retried.group(2).split(", ")]
    assert killed_day in retried_days and int(retried.group(1)) == len(retried_days)
    # every day materialized (one run), checked and published
    found_runs = materializations(env)
    assert sorted(found_runs) == [d.isoformat() for d in days]
    assert len({run_id for ids in found_runs.values() for run_id in ids}) == 1
    assert {("schema", d.isoformat()) for d in days} <= check_partitions(env)
    for day in days:
        assert pl.read_parquet(env.preprocessed(day)).height == 1440
    text = next((env.logs_dir / "etl").glob("etl_*.log")).read_text()
    assert "[WARNING] A worker process died" in text and f"{killed_day}" in text


# ---------------------------------------------------------------------------------------------
# The README's commands, as written: `quantgod demo`, then the "Daily use" block in the same folder

README = REPO / "README.md"
NOT_RUN = ("dagster dev", "mlflow ui", "optuna-dashboard")  # servers a person leaves running


def readme_bash_blocks(after: str | None = None) -> list[str]:
    """The ```bash blocks of README.md (those after the `after` heading line, when given)."""
    text = README.read_text(encoding="utf-8")
    if after is not None:
        text = text[text.index(f"\n{after}\n"):]
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def command_lines(block: str) -> list[str]:
    """The block's commands: no blank or comment lines, continuation lines joined."""
    return [line.strip() for line in block.replace("\\\n", " ").splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_ci_installs_and_tests_as_the_readme_says():
    setup, tests = readme_bash_blocks()[:2]
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    install = re.search(r"pip install torch[^&\n]*", setup)
    assert install is not None, setup
    assert "--index-url https://download.pytorch.org/whl/cpu" in install.group(0)
    assert re.search(rf"^{re.escape(install.group(0).strip())}$", ci, flags=re.M), ci
    assert command_lines(tests) == ['pip install -e ".[dev]" && pytest']
    assert re.search(r'^pip install -e "\.\[dev\]" && pytest$', ci, flags=re.M), ci


@pytest.mark.slow
def test_demo_then_the_readme_daily_use_commands_as_written(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUANTGOD_") and k != "DAGSTER_HOME"}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    quantgod = Path(sys.executable).with_name("quantgod")
    demo = subprocess.run([str(quantgod), "demo"] if quantgod.exists() else
                          [sys.executable, "-m", "quantgod_assets.cli", "demo"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    said = demo.stdout + demo.stderr
    assert demo.returncode == 0, said[-5000:]
    for stage in ("book", "labels", "optimization", "model"):
        assert re.search(rf"^\[demo\] \d/4 {stage}\b.* ok in \d+\.\d s", demo.stdout, flags=re.M), said
    assert re.search(r"^\[demo\] done in \d+ s", demo.stdout, flags=re.M), said
    assert "warning" not in said.lower(), said  # a clean run warns of nothing
    assert "mlflow ui --backend-store-uri sqlite:///mlflow.db" in said and "dagster dev" in said
    card = re.search(r"card:\s+(\S+\.md)", said)
    assert card is not None and (tmp_path / card.group(1)).is_file(), said
    pictures = re.findall(r"^\[demo\]\s+(\S+\.png)$", demo.stdout, flags=re.M)
    assert pictures and all((tmp_path / p).is_file() for p in pictures), said
    [log] = (tmp_path / "logs" / "demo").glob("demo_*.log")
    assert "did not yield or return expected outputs" not in log.read_text(encoding="utf-8")

    [block] = readme_bash_blocks("## Daily use")[:1]
    commands = command_lines(block)
    exports = [c for c in commands if c.startswith("export ")]
    ran = []
    for command in commands:
        if command.startswith(("export ", *NOT_RUN)):
            continue
        done = subprocess.run(["bash", "-c", "\n".join([*exports, command])], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, f"{command}\n{(done.stdout + done.stderr)[-4000:]}"
        ran.append(command)
    assert any("--partition-range" in c for c in ran) and any("quantgod predict" in c for c in ran), ran
    assert any("optimization" in c for c in ran) and any("model" in c for c in ran), ran


def test_every_quantgod_option_says_its_default_or_that_it_is_required():
    import argparse

    from quantgod_assets.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"etl", "generate", "demo", "plots", "predict"} <= set(commands)
    silent = []
    for name, parser in commands.items():
        parser.format_help()  # every %(default)s renders
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            shown = action.help or ""
            if "default" not in shown and "required" not in shown:
                silent.append(f"quantgod {name} {'/'.join(action.option_strings) or action.dest}: {shown}")
    assert not silent, "\n".join(silent)
