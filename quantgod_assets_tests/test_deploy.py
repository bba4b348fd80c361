"""deploy/: the instance files pass Dagster's own validation (and a broken copy does not), the
Kubernetes code location loads with valid per-step resources, and trial workers in separate
processes share one journal-file Optuna study.

Needs the `deploy` extra (dagster-postgres, dagster-k8s, dagster-docker): the instance files name
their classes, and validating them means importing those classes.
"""

from __future__ import annotations

import importlib
import json
import runpy
import tempfile
from pathlib import Path

import pytest
import yaml

from .builders import run_toy_workers

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
INSTANCE_FILES = [DEPLOY / "dagster.yaml", DEPLOY / "docker" / "dagster.yaml"]
PG_ENV = {
    "DAGSTER_PG_HOST": "db.example.internal",
    "DAGSTER_PG_PORT": "5432",
    "DAGSTER_PG_DB": "dagster",
    "DAGSTER_PG_USERNAME": "dagster",
    "DAGSTER_PG_PASSWORD": "not-a-secret",
    "DAGSTER_K8S_NAMESPACE": "quantgod",
    "QUANTGOD_IMAGE": "registry.example/quantgod:test",
}


def validate_instance(config_dir: Path, filename: str = "dagster.yaml") -> dict[str, str]:
    """Dagster's instance validation, all the way down: the file's schema (`InstanceRef.from_dir`,
    what `DagsterInstance.get()` runs first), then each configured class (storage, run launcher,
    run coordinator, ...) imported and its config processed against the class's own schema, env
    vars resolved: what `ConfigurableClassData.rehydrate` does before building the object. Nothing
    connects to PostgreSQL or Kubernetes. Returns {field: module.Class}."""
    from dagster._config import process_config, resolve_to_config_type
    from dagster._core.errors import DagsterInvalidConfigError
    from dagster._core.instance.ref import InstanceRef
    from dagster._serdes import ConfigurableClassData

    with tempfile.TemporaryDirectory() as home:
        ref = InstanceRef.from_dir(home, config_dir=str(config_dir), config_filename=filename)
    classes = {}
    for field, value in ref._asdict().items():
        if not isinstance(value, ConfigurableClassData):
            continue
        klass = getattr(importlib.import_module(value.module_name), value.class_name)
        result = process_config(resolve_to_config_type(klass.config_type()), value.config_dict)
        if not result.success:
            raise DagsterInvalidConfigError(f"{field}: {value.module_name}.{value.class_name}", result.errors,
                                            value.config_dict)
        classes[field] = f"{value.module_name}.{value.class_name}"
    return classes


@pytest.fixture
def pg_env(monkeypatch):
    for key, value in PG_ENV.items():
        monkeypatch.setenv(key, value)


def test_deploy_extra_is_installed():
    # not a skip: the deploy tests mean nothing without these (pip install -e ".[dev,deploy]")
    for module in ("dagster_postgres", "dagster_k8s", "dagster_docker"):
        importlib.import_module(module)


@pytest.mark.parametrize("path", INSTANCE_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_instance_file_passes_dagster_validation(path, pg_env):
    classes = validate_instance(path.parent, path.name)
    assert classes["storage_data"] == "dagster_postgres.DagsterPostgresStorage"
    assert classes["run_storage_data"] == "dagster_postgres.PostgresRunStorage"
    assert classes["run_coordinator_data"].endswith(".QueuedRunCoordinator")
    launcher = {"dagster.yaml": "dagster_k8s.K8sRunLauncher", "docker": "dagster_docker.DockerRunLauncher"}
    expected = launcher["docker" if path.parent.name == "docker" else "dagster.yaml"]
    assert classes["run_launcher_data"] == expected
    coordinator = yaml.safe_load(path.read_text())["run_coordinator"]["config"]
    assert coordinator["max_concurrent_runs"] >= 1 and coordinator["tag_concurrency_limits"]


def _broken_copy(tmp_path: Path, source: Path, edit) -> Path:
    data = yaml.safe_load(source.read_text())
    edit(data)
    out = tmp_path / "dagster.yaml"
    out.write_text(yaml.safe_dump(data))
    return tmp_path


def _rename(mapping: dict, old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda d: _rename(d, "run_coordinator", "run_cordinator"), id="misspelled-top-level-key"),
        pytest.param(lambda d: _rename(d["storage"]["postgres"]["postgres_db"], "hostname", "host_name"),
                     id="misspelled-postgres-key"),
        pytest.param(lambda d: _rename(d["run_launcher"]["config"], "instance_config_map", "instance_configmap"),
                     id="misspelled-launcher-key"),
        pytest.param(lambda d: d["run_coordinator"]["config"].update(max_concurrent_runs="eight"),
                     id="wrong-type"),
        pytest.param(lambda d: d["run_launcher"].update({"class": "K8sRunLaunchr"}), id="unknown-class"),
    ],
)
def test_a_broken_instance_file_is_rejected(tmp_path, pg_env, edit):
    from dagster._check import CheckError
    from dagster._core.errors import DagsterInvalidConfigError

    folder = _broken_copy(tmp_path, DEPLOY / "dagster.yaml", edit)
    with pytest.raises((DagsterInvalidConfigError, CheckError, AttributeError)):
        validate_instance(folder)


def test_missing_postgres_credentials_are_rejected(pg_env, monkeypatch):
    from dagster._core.errors import DagsterInvalidConfigError

    monkeypatch.delenv("DAGSTER_PG_PASSWORD")
    with pytest.raises(DagsterInvalidConfigError, match="DAGSTER_PG_PASSWORD"):
        validate_instance(DEPLOY)


def test_k8s_code_location_loads_with_gpu_steps():
    import dagster as dg
    from dagster._config import process_config, resolve_to_config_type
    from dagster_k8s.job import USER_DEFINED_K8S_JOB_CONFIG_SCHEMA, get_user_defined_k8s_config

    ns = runpy.run_path(str(DEPLOY / "k8s" / "definitions.py"))
    defs = ns["defs"]
    dg.Definitions.validate_loadable(defs)
    steps = ns["step_k8s_config"]()
    ops = {a.op.name for a in defs.assets}
    assert set(steps) <= ops, f"step_resources.yaml names no asset: {set(steps) - ops}"
    for name in ("optimization", "model"):
        limits = steps[name]["container_config"]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == 1
        # the same value as a `dagster-k8s/config` op tag goes through dagster-k8s's own parser
        parsed = get_user_defined_k8s_config({"dagster-k8s/config": json.dumps(steps[name])})
        assert parsed.container_config["resources"]["limits"]["nvidia.com/gpu"] == 1
    for name, value in steps.items():
        assert process_config(resolve_to_config_type(USER_DEFINED_K8S_JOB_CONFIG_SCHEMA), value).success, name
    job = defs.resolve_job_def("train_on_gpu")
    assert job.executor_def.name == "quantgod_k8s_executor"
    assert job.tags.get("quantgod/gpu") == "true"


def test_helm_values_run_this_code_location():
    values = yaml.safe_load((DEPLOY / "k8s" / "values.yaml").read_text())
    deployment = values["dagster-user-deployments"]["deployments"][0]
    assert "deploy/k8s/definitions.py" in " ".join(deployment["dagsterApiGrpcArgs"])
    env = {e["name"] for e in deployment["env"]}
    assert {"QUANTGOD_RAW_ROOT", "QUANTGOD_DATA_DIR", "QUANTGOD_MLFLOW_URI"} <= env
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"


def test_two_worker_processes_share_a_journal_study(tmp_path):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = tmp_path / "optuna" / "study.log"
    n_trials = 8
    started = run_toy_workers(str(journal), tmp_path, n_trials)

    study = optuna.load_study(study_name="shared", storage=JournalStorage(JournalFileBackend(str(journal))))
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == n_trials
    numbers = [t.number for t in complete]
    assert sorted(numbers) == list(range(n_trials))  # distinct, none lost
    pids = {t.user_attrs["worker_pid"] for t in complete}
    assert pids == set(started), "each worker ran at least one trial"
    assert all(t.value is not None and t.value <= 0 for t in complete)
    assert len({(t.params["x"], t.params["y"]) for t in complete}) == n_trials  # workers did not repeat points
