"""The platform on a real PostgreSQL server (`.ci/postgres` in CI: Debian's package on a local port):
Optuna workers sharing one study there, and the Dagster instance of deploy/dagster.yaml (its storage
and run queue; the local run launcher instead of Kubernetes) running a two-day backfill from the CLI
and the daemon's sensor picking up a new day."""

import datetime as dt
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from quantgod_assets.orderbook.synthetic import generate_days

from .builders import REPO, make_env, run_toy_workers, running_daemon

pytestmark = pytest.mark.slow

DAY1, DAY2, DAY3 = dt.date(2025, 3, 10), dt.date(2025, 3, 11), dt.date(2025, 3, 12)


def new_database(server_url: str) -> str:
    """A fresh database on the server; its URL."""
    import psycopg2

    name = f"qg_{uuid.uuid4().hex[:10]}"
    connection = psycopg2.connect(server_url)
    connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
    connection.close()
    return server_url.rsplit("/", 1)[0] + "/" + name


def test_two_optuna_workers_share_a_study_on_postgres(postgres_url, tmp_path):
    import optuna

    storage = new_database(postgres_url)
    n_trials = 8
    pids = run_toy_workers(storage, tmp_path, n_trials)
    study = optuna.load_study(study_name="shared", storage=storage)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    assert sorted(t.number for t in complete) == list(range(n_trials))
    assert {t.user_attrs["worker_pid"] for t in complete} == set(pids)


def instance_home(tmp_path: Path, database_url: str) -> tuple[Path, dict[str, str]]:
    """DAGSTER_HOME holding deploy/dagster.yaml with the local run launcher, and its DAGSTER_PG_* variables."""
    config = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())
    config.pop("run_launcher")  # Kubernetes Jobs: the default launcher runs them as local processes here
    home = tmp_path / "pg_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    rest = database_url.split("://", 1)[1]
    user, host_port_db = rest.split("@", 1)
    host_port, db = host_port_db.split("/", 1)
    host, port = host_port.split(":")
    return home, {"DAGSTER_HOME": str(home), "DAGSTER_PG_HOST": host, "DAGSTER_PG_PORT": port, "DAGSTER_PG_DB": db,
                  "DAGSTER_PG_USERNAME": user, "DAGSTER_PG_PASSWORD": "unused-with-trust-auth"}


def test_the_deploy_instance_on_postgres_backfills_and_its_daemon_picks_up_a_new_day(postgres_url, tmp_path):
    env = make_env(tmp_path, {})  # lenient gaps: the generated days are short
    etl = env.config_dir / "etl.yaml"
    settings = yaml.safe_load(etl.read_text())
    settings["automation"] = {**settings.get("automation", {}), "enabled": True, "interval_s": 30}
    etl.write_text(yaml.safe_dump(settings))
    archives = generate_days(DAY1, 3, tmp_path / "generated", rate_ms=1000, seed=9, duration_s=1800)
    (env.raw_root / "2025").mkdir(parents=True)
    for path in archives[:2]:
        shutil.copyfile(path, env.raw_root / "2025" / path.name)
    _home, pg_env = instance_home(tmp_path, new_database(postgres_url))
    run_env = {**os.environ, **env.env(), **pg_env, "PYTHONPATH": str(REPO)}

    # a two-day backfill from the CLI, recorded in PostgreSQL
    done = subprocess.run([sys.executable, "-m", "dagster", "asset", "materialize", "-m", "quantgod_assets.definitions",
                           "--select", "BTCUSDT_linear/preprocessed_book", "--partition-range", f"{DAY1}...{DAY2}"],
                          cwd=tmp_path, env=run_env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    check = ("import dagster as dg; i = dg.DagsterInstance.get(); print(type(i.run_storage).__name__, "
             "*sorted(i.get_materialized_partitions(dg.AssetKey(['BTCUSDT_linear', 'preprocessed_book']))))")
    recorded = subprocess.run([sys.executable, "-c", check], env=run_env, capture_output=True, text=True, check=True)
    assert recorded.stdout.split() == ["PostgresRunStorage", str(DAY1), str(DAY2)]

    # the daemon on the same instance: the sensor sees the third day land and processes it
    with running_daemon(tmp_path, run_env) as daemon:
        shutil.copyfile(archives[2], env.raw_root / "2025" / archives[2].name)
        book = env.preprocessed_dir() / f"{DAY3}.parquet"
        daemon.wait_for(book.is_file, "the new day preprocessed by the daemon's sensor run")
