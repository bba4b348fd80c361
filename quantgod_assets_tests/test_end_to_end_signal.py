"""Generated days with a planted signal, through every plain stage, give a model that beats the
majority class on the untouched test split.

The generator's archives (one message a second, so the test stays short) → the numba engine →
labels across day ends → the small ML profile's final model, scored once on the test split.
"""

import datetime as dt

import pytest

from quantgod_assets.labelling import label_day_files
from quantgod_assets.ml.final import train_final_model
from quantgod_assets.orderbook.etl import convert_day
from quantgod_assets.orderbook.synthetic import generate_days
from quantgod_assets.settings import load_settings

from .builders import make_env

START = dt.date(2025, 3, 10)
DAYS = 4


@pytest.fixture
def signal_env(tmp_path, monkeypatch):
    env = make_env(tmp_path, {}, lenient_gaps=False)
    for key, value in env.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("QUANTGOD_ML_PROFILE", "small")
    return env


def test_model_on_generated_days_beats_the_majority_class(signal_env):
    settings = load_settings()
    archives = generate_days(START, DAYS, settings.paths.raw_root, rate_ms=1000, seed=11)
    pre_dir = settings.paths.preprocessed_dir
    for path in archives:
        summary = convert_day(path, settings.paths.preprocessed_path(path.name[:10]))
        assert summary.rows == 1440 and summary.valid_share > 0.99
    for k in range(DAYS):
        label_day_files(pre_dir, settings.paths.labelled_dir, START + dt.timedelta(days=k))

    final = train_final_model(settings, use_best_params=False, mlflow=False)

    majority = final.baselines["majority"]["f1_macro"]
    assert final.test["n"] > 500  # the test split is a real one, not a handful of windows
    assert final.test["f1_macro"] > majority + 0.05, (final.test, final.baselines)
