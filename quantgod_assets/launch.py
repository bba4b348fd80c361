"""Materializing days through Dagster from plain Python (the `quantgod demo` command uses it).

Runs the real CLI, `dagster asset materialize -m quantgod_assets.definitions --select ...
--partition-range A...B` (no partition flag for the assets that are not partitioned, start=None:
`optimization`, `model`), in a subprocess against the persistent instance (`DAGSTER_HOME`,
default `./.dagster_home`), so `dagster dev` afterwards shows the runs, materializations and checks.
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = ["dagster_home", "forkserver_config", "materialize_command", "materialize_range", "write_config_overrides"]

DEFINITIONS_MODULE = "quantgod_assets.definitions"
INSTANCE_YAML = """\
telemetry:
  enabled: false
"""


def dagster_home(path: str | Path | None = None) -> Path:
    """$DAGSTER_HOME, else ./.dagster_home; created with a minimal dagster.yaml when missing."""
    home = Path(path or os.environ.get("DAGSTER_HOME") or ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        from .settings import REPO_CONFIGS

        template = REPO_CONFIGS / "dagster.yaml"
        config.write_text(template.read_text(encoding="utf-8") if template.is_file() else INSTANCE_YAML,
                          encoding="utf-8")
    return home


def forkserver_config(preload: Sequence[str] = ()) -> dict[str, Any]:
    """Run config starting the steps from a forkserver that imported the definitions and `preload`
    once (a step then starts in about a second instead of importing them again); empty where the
    platform has no forkserver (Windows: the executor's default, a fresh process a step)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return {}
    modules = [DEFINITIONS_MODULE, *preload]
    return {"execution": {"config": {"start_method": {"forkserver": {"preload_modules": modules}}}}}


def _key(day: dt.date | str) -> str:
    return day.isoformat() if isinstance(day, dt.date) else dt.date.fromisoformat(day).isoformat()


def materialize_command(start: dt.date | str | None, end: dt.date | str | None = None,
                        select: str = "key:*/preprocessed_book",
                        run_config: Mapping[str, Any] | None = None) -> list[str]:
    """The CLI line; `start=None` selects assets that are not partitioned (no partition flag);
    `run_config` goes in as `--config-json`."""
    command = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", DEFINITIONS_MODULE, "--select", select]
    if run_config:
        command += ["--config-json", json.dumps(run_config)]
    if start is None:
        return command
    if end is None or _key(start) == _key(end):
        return [*command, "--partition", _key(start)]
    return [*command, "--partition-range", f"{_key(start)}...{_key(end)}"]


def _merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def write_config_overrides(source: Path, target: Path, overrides: Mapping[str, Mapping[str, Any]]) -> Path:
    """Copies the YAML files of `source` to `target` with `{"etl.yaml": {"checks": {...}}}` merged in."""
    target.mkdir(parents=True, exist_ok=True)
    for path in Path(source).glob("*.yaml"):
        shutil.copyfile(path, target / path.name)
    for name, changes in overrides.items():
        path = target / name
        data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else {}
        path.write_text(yaml.safe_dump(_merge(data or {}, changes), sort_keys=False), encoding="utf-8")
    return target


def materialize_range(
    start: dt.date | str | None,
    end: dt.date | str | None = None,
    *,
    select: str = "key:*/preprocessed_book",
    home: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    capture: bool = False,
    timeout_s: float | None = None,
    config_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    on_line: Callable[[str], None] | None = None,
    run_config: Mapping[str, Any] | None = None,
) -> subprocess.CompletedProcess:
    """One Dagster run materializing `select` for the days `start`..`end` (inclusive); with
    `start=None`, `select` names assets that are not partitioned.

    Returns the finished process; `returncode` is 0 when every day succeeded. The run's log goes
    to this process's stdout/stderr unless `capture` is set. QUANTGOD_* variables pass through.
    `config_overrides` runs on a temporary copy of the configs with those values changed, e.g.
    `{"etl.yaml": {"checks": {"gap_fail_share": 1.0}}}` for generated days shorter than a day.
    `on_line` receives the run's log (stdout and stderr merged) line by line as it is written,
    instead of this process's streams (`capture` and `timeout_s` do not apply then). `run_config`:
    the run's config (`--config-json`), e.g. `forkserver_config()`.
    """
    run_env = {**os.environ, **(env or {})}
    default_home = Path(cwd) / ".dagster_home" if cwd is not None else None
    run_env["DAGSTER_HOME"] = str(dagster_home(home or run_env.get("DAGSTER_HOME") or default_home))
    with tempfile.TemporaryDirectory(prefix="quantgod_configs_") as temp:
        if config_overrides:
            from .settings import REPO_CONFIGS

            local = Path(cwd or ".") / "configs"
            default = local if (local / "etl.yaml").is_file() else REPO_CONFIGS
            source = Path(run_env.get("QUANTGOD_CONFIG_DIR") or default)
            if not source.is_absolute() and cwd is not None and "QUANTGOD_CONFIG_DIR" in run_env:
                source = Path(cwd) / source
            run_env["QUANTGOD_CONFIG_DIR"] = str(write_config_overrides(source, Path(temp), config_overrides))
        if on_line is not None:
            return _streamed(materialize_command(start, end, select, run_config), run_env, cwd, on_line)
        return subprocess.run(
            materialize_command(start, end, select, run_config),
            env=run_env,
            cwd=cwd,
            capture_output=capture,
            text=True,
            timeout=timeout_s,
            check=False,
        )


def _streamed(command: list[str], env: Mapping[str, str], cwd: str | Path | None,
              on_line: Callable[[str], None]) -> subprocess.CompletedProcess:
    with subprocess.Popen(command, env=dict(env), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, encoding="utf-8", errors="replace", bufsize=1) as process:
        assert process.stdout is not None
        for line in process.stdout:
            on_line(line.rstrip("\r\n"))
        returncode = process.wait()
    return subprocess.CompletedProcess(command, returncode)
