"""The platform on its own: the real `dagster-daemon` (a subprocess, a temp instance) runs the
new_archive_days sensor; a day dropped into the archive root is preprocessed, labelled and
predicted without a manual launch, and the day before is relabelled once its next day arrived."""

import datetime as dt
import os
import shutil

import pyarrow.parquet as pq
import pytest
import yaml

from quantgod_assets.orderbook.synthetic import generate_days

from .builders import make_day_frame, make_env, running_daemon

pytestmark = pytest.mark.slow

DAY1, DAY2 = dt.date(2025, 3, 10), dt.date(2025, 3, 11)
SUFFIX = "SELL_0004_BUY_0008_1h"


def write_champion(models_dir) -> None:
    """A tiny untrained champion (2 levels, 10-minute windows) with the pointer beside it."""
    import json

    import torch

    from quantgod_assets.ml.dataset import Scaler
    from quantgod_assets.ml.features import frame_features, n_features
    from quantgod_assets.ml.live import feature_bins
    from quantgod_assets.ml.models import build_model
    from quantgod_assets.ml.train import save_model

    torch.manual_seed(0)
    block = frame_features(make_day_frame(DAY1), 2)
    model = build_model("tcn_lstm", n_features(2), {"seq_len": 10, "tcn_channels": 4, "lstm_hidden": 4})
    save_model(models_dir / "champion.pth", model, feature_names=block.names,
               scaler_dict=Scaler.fit(block.values, block.valid, block.names).to_dict(),
               label_settings={"classes": ["SELL", "NEUTRAL", "BUY"], "lookahead": 60},
               extra={"seq_len": 10, "n_levels": 2, "feature_bins": feature_bins(block.values).tolist(),
                      "train_priors": [0.3, 0.5, 0.2]})
    pointer = {"registered_version": "1", "data_range": "2025-03-01..2025-03-09"}
    (models_dir / "champion.json").write_text(json.dumps(pointer))


def test_a_day_dropped_on_the_mount_is_processed_by_the_daemon(tmp_path):
    env = make_env(tmp_path, {}, lenient_gaps=False)
    etl = env.config_dir / "etl.yaml"
    settings = yaml.safe_load(etl.read_text())
    settings["automation"] = {**settings.get("automation", {}), "enabled": True, "interval_s": 30}
    etl.write_text(yaml.safe_dump(settings))
    (env.data_dir / "models" / "BTCUSDT_linear").mkdir(parents=True)
    write_champion(env.data_dir / "models" / "BTCUSDT_linear")
    generated = tmp_path / "generated"
    day1, day2 = generate_days(DAY1, 2, generated, rate_ms=1000, seed=5)
    pre = env.preprocessed_dir()
    labelled = env.labelled_dir() / SUFFIX
    predictions = env.data_dir / "predictions" / "BTCUSDT_linear"
    with running_daemon(tmp_path, {**os.environ, **env.env()}) as daemon:
        (env.raw_root / "2025").mkdir(parents=True)
        shutil.copyfile(day1, env.raw_root / "2025" / day1.name)  # the first day lands on the mount
        daemon.wait_for(lambda: (labelled / f"{DAY1}.parquet").is_file()
                        and any(predictions.glob(f"*/{DAY1}.parquet")), "day 1 preprocessed, labelled and predicted")
        assert (pre / f"{DAY1}.parquet").is_file()
        assert pq.read_schema(labelled / f"{DAY1}.parquet").metadata[b"quantgod.label.next_day"] == b"absent"

        shutil.copyfile(day2, env.raw_root / "2025" / day2.name)  # the next day arrives
        daemon.wait_for(lambda: (labelled / f"{DAY2}.parquet").is_file()
                        and any(predictions.glob(f"*/{DAY2}.parquet")), "day 2 processed")
        daemon.wait_for(lambda: pq.read_schema(labelled / f"{DAY1}.parquet").metadata[b"quantgod.label.next_day"]
                        == b"present", "day 1 relabelled with day 2's book")
