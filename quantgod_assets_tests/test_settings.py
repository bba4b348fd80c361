from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest

from quantgod_assets.settings import (
    ConfigError,
    RawRootMissingError,
    config_dir,
    load_settings,
    partitions_start,
)

REPO = Path(__file__).resolve().parent.parent
ENV_KEYS = ("QUANTGOD_RAW_ROOT", "QUANTGOD_DATA_DIR", "QUANTGOD_LOGS_DIR", "QUANTGOD_SYMBOL", "QUANTGOD_CONFIG_DIR")


@pytest.fixture
def clean_env(monkeypatch):
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


@pytest.fixture
def configs(tmp_path, clean_env) -> Path:
    folder = tmp_path / "configs"
    shutil.copytree(REPO / "configs", folder)
    clean_env.setenv("QUANTGOD_CONFIG_DIR", str(folder))
    return folder


def test_repo_configs_give_the_team_defaults(clean_env):
    clean_env.chdir(REPO)
    s = load_settings()
    assert s.config_dir == Path("configs")
    assert s.paths.raw_root == Path("data/L2/raw")
    assert s.paths.data_dir == Path("data")
    assert s.paths.logs_dir == Path("logs")
    assert s.paths.preprocessed_path(dt.date(2025, 3, 14)) == Path("data/L2/pre_processed/2025-03-14.parquet")
    assert s.symbol == "BTCUSDT"
    assert s.etl.partitions_start == dt.date(2023, 1, 18)
    assert s.etl.workers is None and s.etl.max_silence_s == 60
    assert (s.etl.gap_warn_share, s.etl.gap_fail_share) == (0.01, 0.10)
    assert s.etl.download.enabled is False
    assert s.etl.download.base_url == "https://quote-saver.bycsi.com/orderbook/linear"
    assert s.etl.skip_bad_lines is False
    assert s.etl.depths == (200, 500)
    assert (s.labelling.lookahead, s.labelling.threshold_short, s.labelling.threshold_long) == (60, -0.004, 0.008)
    assert s.labelling.price_column == "micro_price"
    assert s.optimization.storage == "sqlite:///optuna_study.db"
    assert s.optimization.n_trials > 0 and "lr" in s.optimization.search_space
    assert s.training.class_weights == (2.0, 1.0, 2.0)
    assert s.training.epochs > 0 and s.training.batch_size > 0 and s.training.lr > 0


def test_repo_configs_are_found_from_another_folder(tmp_path, clean_env):
    clean_env.chdir(tmp_path)
    assert config_dir() == REPO / "configs"
    assert load_settings().etl.partitions_start == dt.date(2023, 1, 18)


def test_environment_overrides(configs, clean_env, tmp_path):
    clean_env.setenv("QUANTGOD_RAW_ROOT", "/workspace/gdrive/bybit")
    clean_env.setenv("QUANTGOD_DATA_DIR", str(tmp_path / "out"))
    clean_env.setenv("QUANTGOD_LOGS_DIR", str(tmp_path / "lg"))
    clean_env.setenv("QUANTGOD_SYMBOL", "ETHUSDT")
    s = load_settings()
    assert s.paths.raw_root == Path("/workspace/gdrive/bybit")
    assert s.paths.preprocessed_dir == tmp_path / "out" / "L2" / "pre_processed"
    assert s.paths.logs_dir == tmp_path / "lg"
    assert s.symbol == "ETHUSDT"
    assert s.config_dir == configs


def test_config_dir_values_are_read(configs):
    (configs / "etl.yaml").write_text(
        "partitions_start: 2024-02-01\nworkers: 3\nmax_silence_s: 30\nskip_bad_lines: true\n"
        "checks: {gap_warn_share: 0.02, gap_fail_share: 0.2}\n"
        "download: {enabled: true, base_url: 'http://127.0.0.1:9/x/'}\n"
    )
    (configs / "labelling.yaml").write_text("lookahead: 30\nthreshold_short: -0.002\n")
    s = load_settings()
    assert s.etl.partitions_start == dt.date(2024, 2, 1) == partitions_start()
    assert s.etl.workers == 3 and s.etl.worker_count(days=2) == 2 and s.etl.worker_count(days=10) == 3
    assert s.etl.max_silence_s == 30 and s.etl.skip_bad_lines is True
    assert (s.etl.gap_warn_share, s.etl.gap_fail_share) == (0.02, 0.2)
    assert s.etl.download.enabled and s.etl.download.base_url == "http://127.0.0.1:9/x"
    assert (s.labelling.lookahead, s.labelling.threshold_short, s.labelling.threshold_long) == (30, -0.002, 0.008)
    # files that are absent fall back to the defaults
    (configs / "training.yaml").unlink()
    assert load_settings().training.class_weights == (2.0, 1.0, 2.0)


@pytest.mark.parametrize(
    "text, words",
    [
        ("workers: 0\n", "workers"),
        ("checks: {gap_warn_share: 0.5, gap_fail_share: 0.1}\n", "gap_warn_share"),
        ("checks: {gap_fail_share: 3}\n", "gap_fail_share"),
        ("partitions_start: yesterday\n", "partitions_start"),
        ("max_silence_s: [1]\n", "max_silence_s"),
        ("- a list\n", "mapping"),
        ("key: [unclosed\n", "YAML"),
    ],
)
def test_bad_values_name_the_file_and_key(configs, text, words):
    (configs / "etl.yaml").write_text(text)
    with pytest.raises(ConfigError, match=words) as info:
        load_settings()
    assert "etl.yaml" in str(info.value)


def test_missing_config_dir_is_named(clean_env, tmp_path):
    clean_env.setenv("QUANTGOD_CONFIG_DIR", str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="QUANTGOD_CONFIG_DIR"):
        load_settings()


def test_missing_raw_root_names_the_setting_and_the_mount(configs, clean_env, tmp_path):
    clean_env.setenv("QUANTGOD_RAW_ROOT", str(tmp_path / "gdrive" / "bybit"))
    with pytest.raises(RawRootMissingError) as info:
        load_settings().paths.require_raw_root()
    message = str(info.value)
    assert "QUANTGOD_RAW_ROOT" in message and str(tmp_path / "gdrive" / "bybit") in message
    assert "mount may be down" in message
    (tmp_path / "gdrive" / "bybit").mkdir(parents=True)
    assert load_settings().paths.require_raw_root() == tmp_path / "gdrive" / "bybit"


def test_missing_default_raw_root_also_names_the_setting(configs, clean_env, tmp_path):
    clean_env.chdir(tmp_path)
    with pytest.raises(RawRootMissingError, match="QUANTGOD_RAW_ROOT.*mount may be down"):
        load_settings().paths.require_raw_root()
