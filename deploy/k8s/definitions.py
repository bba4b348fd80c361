"""The code location for Kubernetes: the same assets, each step in its own pod, GPUs where needed.

`quantgod_assets.definitions` runs every step in one process pool (multiprocess_executor); here the
`k8s_job_executor` (dagster-k8s) starts one Kubernetes Job per step, with the resources of
`step_resources.yaml` next to this file (`optimization` and `model`: `nvidia.com/gpu: 1`). Nothing
in `quantgod_assets` changes. The user code deployment serves it with

    dagster api grpc --python-file /opt/quantgod/deploy/k8s/definitions.py --host 0.0.0.0 --port 3030

(deploy/k8s/values.yaml). Needs the `deploy` extra (`pip install -e ".[deploy]"`) and, at run time,
an instance whose run launcher is the K8sRunLauncher (deploy/dagster.yaml).

Jobs: `train_on_gpu` (optimization then model, tagged `quantgod/gpu=true`: the run queue runs one at
a time) and `etl_range` (preprocessed_book + labelled_frame, for backfills from the launchpad).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import yaml
from dagster_k8s import k8s_job_executor

from quantgod_assets.definitions import defs as local_defs

STEP_RESOURCES = Path(__file__).with_name("step_resources.yaml")
GPU_TAG = {"quantgod/gpu": "true"}


def step_k8s_config(path: Path = STEP_RESOURCES) -> dict[str, Any]:
    """{op name: dagster-k8s/config value} from step_resources.yaml; an entry named after a daily
    stage (`preprocessed_book`) applies to that stage of every instrument (`BTCUSDT_linear__preprocessed_book`)."""
    from quantgod_assets.definitions import INSTRUMENTS

    listed = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    daily = {"raw_zip", "preprocessed_book", "labelled_frame", "predictions", "live_performance"}
    out = {name: value for name, value in listed.items() if name not in daily}
    for name, value in listed.items():
        if name in daily:
            out.update({f"{instrument.key}__{name}": value for instrument in INSTRUMENTS})
    return out


executor = k8s_job_executor.configured(
    {
        "max_concurrent": 8,  # step pods at once within one run
        "per_step_k8s_config": step_k8s_config(),
    },
    name="quantgod_k8s_executor",
)

train_on_gpu = dg.define_asset_job(
    "train_on_gpu", selection=dg.AssetSelection.assets("optimization", "model"), tags=GPU_TAG,
    description="The Optuna search, then the final model; one GPU pod per step.",
)
etl_range = dg.define_asset_job(
    "etl_range", selection=dg.AssetSelection.from_string('key:"*/preprocessed_book" or key:"*/labelled_frame"'),
    description="Preprocess and label days (launch a backfill over a date range).",
)

defs = dg.Definitions(
    assets=local_defs.assets,
    asset_checks=local_defs.asset_checks,
    resources=local_defs.resources,
    jobs=[train_on_gpu, etl_range],
    executor=executor,
)
