"""`quantgod demo`: the pipeline end to end on generated days, through Dagster.

Generates a few days into the archive root (QUANTGOD_RAW_ROOT, default data/L2/raw), then
materializes each stage with the real `dagster asset materialize` CLI against the persistent
instance in `.dagster_home/`, so `dagster dev` afterwards shows every run, check and picture.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time

from .launch import dagster_home, materialize_range
from .secrets import redact_url
from .settings import load_settings

# The stages the demo materializes, in order: (asset selection, what it shows).
STAGES = (
    ("preprocessed_book", "order-book replay + checks"),
    ("labelled_frame", "SELL/NEUTRAL/BUY labels + class balance"),
    ("optimization", "Optuna search, small settings"),
    ("model", "walk-forward validation, final model, test block vs baselines with intervals, MLflow"),
)
# Not partitioned: one run over every labelled day, no partition flag.
UNPARTITIONED = {"optimization", "model"}
# The ML stages run with the small profile of configs/optimization.yaml and training.yaml
# (2 trials x 2 epochs, seq_len 30, 10 levels, a batch cap) so the demo stays minutes on a CPU;
# a QUANTGOD_ML_PROFILE already set wins.
DEMO_ML_PROFILE = "small"


def _say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def run_demo(days: int = 3, start: dt.date = dt.date(2025, 3, 10), seed: int = 7,
             duration_s: int | None = None) -> int:
    from .orderbook.synthetic import generate_days

    if days < 1:
        _say("--days must be at least 1")
        return 2
    settings = load_settings()
    end = start + dt.timedelta(days=days - 1)
    root = settings.paths.raw_root
    started = time.perf_counter()
    _say(f"generating {days} day(s) {start}..{end} into {root}")
    for path in generate_days(start, days, root, seed=seed, duration_s=duration_s):
        _say(f"  {path} ({path.stat().st_size / 1e6:.0f} MB)")
    # Generated days shorter than a day are mostly gaps: let the gap check warn, not block.
    overrides = {"etl.yaml": {"checks": {"gap_warn_share": 1.0, "gap_fail_share": 1.0}}} if duration_s else None
    home = dagster_home()
    ml_env = {"QUANTGOD_ML_PROFILE": os.environ.get("QUANTGOD_ML_PROFILE") or DEMO_ML_PROFILE}
    for select, what in STAGES:
        if select in UNPARTITIONED:
            _say(f"materializing {select} ({what}, profile {ml_env['QUANTGOD_ML_PROFILE']}) through Dagster")
            done = materialize_range(None, select=select, home=home, config_overrides=overrides, env=ml_env)
        else:
            _say(f"materializing {select} ({what}) for {start}..{end} through Dagster")
            done = materialize_range(start, end, select=select, home=home, config_overrides=overrides)
        if done.returncode != 0:
            _say(f"{select} failed (exit {done.returncode}); see the lines above and logs/")
            return done.returncode
    _say(f"done in {time.perf_counter() - started:.0f} s. Where to look:")
    _say(f"  data:  {settings.paths.preprocessed_dir}/  (one Parquet of 1440 minutes per day)")
    _say(f"         {settings.paths.labelled_dir}/{settings.labelling.suffix}/  (the labelled days)")
    _say(f"  model: {settings.paths.model_path}  (best params: {settings.paths.best_params_path})")
    _say(f"  card:  {settings.paths.model_path.with_suffix('.md')}  (walk-forward, test with intervals, verdict)")
    _say(f"  logs:  {settings.paths.logs_dir}/{{etl,labelling,optimization,training}}/")
    _say(f"  MLflow: mlflow ui --backend-store-uri {redact_url(settings.training.mlflow.tracking_uri)}")
    _say(f"  Optuna: optuna-dashboard {redact_url(settings.optimization.storage)}")
    _say(f"  UI:    DAGSTER_HOME={home} dagster dev -w workspace.yaml  (then open http://127.0.0.1:3000)")
    return 0


if __name__ == "__main__":
    sys.exit(run_demo())
