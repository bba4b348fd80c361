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
    day = dt.date(2025, 3, 14)
    assert s.paths.preprocessed_path(day) == Path("data/L2/linear/BTCUSDT/pre_processed/2025-03-14.parquet")
    assert s.symbol == "BTCUSDT" and s.instrument.key == "BTCUSDT_linear" and len(s.instruments) == 1
    assert s.paths.models_dir == Path("data/models/BTCUSDT_linear")
    assert s.training.mlflow.registered_model == "quantgod_BTCUSDT_linear"
    assert s.etl.partitions_start == dt.date(2023, 1, 18)
    assert s.etl.workers is None and s.etl.max_silence_s == 60
    assert (s.etl.gap_warn_share, s.etl.gap_fail_share) == (0.01, 0.10)
    assert s.etl.download.enabled is False
    assert s.etl.download.base_url == "https://quote-saver.bycsi.com/orderbook"
    assert s.etl.skip_bad_lines is False
    assert s.etl.depths == (200, 500)
    assert (s.labelling.lookahead, s.labelling.threshold_short, s.labelling.threshold_long) == (60, -0.004, 0.008)
    assert s.labelling.price_column == "micro_price"
    assert s.optimization.storage == "sqlite:///optuna_study.db"
    assert s.optimization.n_trials > 0 and "lr" in s.optimization.search_space
    assert s.training.class_weights == "auto" and s.training.seeds == 3
    assert (s.optimization.metric, s.optimization.goal, s.optimization.folds) == ("f1_macro", "maximize", 5)
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
    assert s.paths.preprocessed_dir == tmp_path / "out" / "L2" / "linear" / "ETHUSDT" / "pre_processed"
    assert s.paths.logs_dir == tmp_path / "lg"
    assert s.symbol == "ETHUSDT" and [i.key for i in s.instruments] == ["ETHUSDT_linear"]
    clean_env.setenv("QUANTGOD_SYMBOL", "ETHUSDT_spot")
    spot = load_settings()
    assert spot.instrument.key == "ETHUSDT_spot"
    assert spot.paths.labelled_dir == tmp_path / "out" / "L2" / "spot" / "ETHUSDT" / "labelled"
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
    assert load_settings().training.class_weights == "auto"


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
    with pytest.raises(RawRootMissingError, match=r"QUANTGOD_RAW_ROOT.*mount may be down"):
        load_settings().paths.require_raw_root()


# ---------------------------------------------------------------------------------------------
# The schema: a misspelt key fails at load, naming the key and the file


@pytest.mark.parametrize(
    "name, text, key, hint",
    [
        ("etl.yaml", "max_silense_s: 30\n", "max_silense_s", "max_silence_s"),
        ("labelling.yaml", "lookahed: 30\n", "lookahed", "lookahead"),
        ("optimization.yaml", "n_trial: 3\n", "n_trial", "n_trials"),
        ("training.yaml", "epoch: 3\n", "epoch", "epochs"),
    ],
)
def test_unknown_key_in_each_file_names_the_key_and_the_file(configs, name, text, key, hint):
    with (configs / name).open("a") as fh:
        fh.write(text)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value) == f"{configs / name}: unknown key '{key}' (did you mean '{hint}'?)"


@pytest.mark.parametrize(
    "name, text, key",
    [
        ("etl.yaml", "download: {enbled: true}\n", "download.enbled"),
        ("etl.yaml", "checks: {gap_warn: 0.1}\n", "checks.gap_warn"),
        ("etl.yaml", "paths: {data: out}\n", "paths.data"),
        ("optimization.yaml", "pruner: {n_startup: 1}\n", "pruner.n_startup"),
        ("optimization.yaml", "search_space: {lr: {type: float, low: 0.1, high: 1, lgo: true}}\n",
         "search_space.lr.lgo"),
        ("training.yaml", "mlflow: {uri: 'sqlite:///x.db'}\n", "mlflow.uri"),
        ("training.yaml", "split: {test: 0.2, valid: 0.3}\n", "split.valid"),
        ("training.yaml", "data: {begin: 2025-03-01}\n", "data.begin"),
        ("training.yaml", "backtest: {fees: 0.001}\n", "backtest.fees"),
    ],
)
def test_unknown_nested_key_is_named_with_its_section(configs, name, text, key):
    (configs / name).write_text(text)
    with pytest.raises(ConfigError, match=f"unknown key '{key}'") as info:
        load_settings()
    assert str(configs / name) in str(info.value)


def _in_small_profile(path, old: str, new: str) -> str:
    """Rewrites `old` as `new` inside the `small:` profile of a YAML file only; returns the text."""
    head, small = path.read_text().split("  small:\n", 1)
    assert old in small
    text = head + "  small:\n" + small.replace(old, new, 1)
    path.write_text(text)
    return text


def test_a_typo_in_a_profile_fails_even_when_the_profile_is_not_chosen(configs, clean_env):
    clean_env.delenv("QUANTGOD_ML_PROFILE", raising=False)
    _in_small_profile(configs / "training.yaml", "    epochs: 2\n", "    epoch: 2\n")
    with pytest.raises(ConfigError) as info:
        load_settings()
    expected = f"{configs / 'training.yaml'}: profiles.small: unknown key 'epoch' (did you mean 'epochs'?)"
    assert str(info.value) == expected


def test_profile_merge_is_typed(configs, clean_env):
    from quantgod_assets.settings import SearchParam, TrainingSettings

    clean_env.setenv("QUANTGOD_ML_PROFILE", "small")
    s = load_settings()
    assert isinstance(s.training, TrainingSettings) and s.training.profile == "small"
    assert (s.training.seq_len, s.training.n_levels, s.training.tcn_channels) == (30, 10, 16)
    assert s.training.patience == 0 and s.training.max_batches_per_epoch == 40
    # nested sections not named by the profile keep the file's values
    assert s.training.mlflow.experiment == "quantgod" and s.training.backtest.min_trades == 30
    assert s.training.split.test == 0.25  # the profile names split.test only
    assert s.optimization.profile == "small" and s.optimization.pruner.n_startup_trials == 5
    assert all(isinstance(p, SearchParam) for p in s.optimization.search_space.values())
    assert s.optimization.search_space["seq_len"].type == "fixed" and s.optimization.search_space["seq_len"].value == 30
    # a profile value of the wrong type fails like the file's own would
    _in_small_profile(configs / "training.yaml", "    seq_len: 30\n", "    seq_len: thirty\n")
    with pytest.raises(ConfigError, match=r"profiles\.small: seq_len='thirty' is not valid"):
        load_settings()


def test_search_space_names_must_be_training_settings(configs):
    (configs / "optimization.yaml").write_text("search_space:\n  lstm_hiden: {type: categorical, choices: [8]}\n")
    with pytest.raises(ConfigError, match=r"optimization.yaml: search_space key\(s\) \['lstm_hiden'\]"):
        load_settings()


def test_old_model_type_names_are_read_as_arch(configs):
    (configs / "training.yaml").write_text("model_type: transformer\n")
    (configs / "optimization.yaml").write_text("search_space:\n  model_type: {type: fixed, value: transformer}\n")
    s = load_settings()
    assert s.training.arch == "transformer"
    assert list(s.optimization.search_space) == ["arch"]
    assert not hasattr(s.training, "model_type")


def test_settings_are_frozen_and_params_are_validated(configs):
    import pydantic

    s = load_settings()
    with pytest.raises(pydantic.ValidationError):
        s.training.epochs = 3
    tuned = s.training.with_params({"lr": 0.002, "tcn_channels": 32})
    assert (tuned.lr, tuned.tcn_channels, tuned.epochs) == (0.002, 32, s.training.epochs)
    assert s.training.lr == 0.001  # the original is untouched
    with pytest.raises(ConfigError, match="unknown key 'lstm_hiden'"):
        s.training.with_params({"lstm_hiden": 8})


def test_download_limits_have_defaults_and_are_read(configs):
    d = load_settings().etl.download
    assert (d.timeout_s, d.deadline_s, d.max_bytes) == (60, 1800, 2 << 30)
    (configs / "etl.yaml").write_text("download: {timeout_s: 5, deadline_s: 30, max_bytes: 1000}\n")
    d = load_settings().etl.download
    assert (d.timeout_s, d.deadline_s, d.max_bytes) == (5, 30, 1000)
    (configs / "etl.yaml").write_text("download: {deadline_s: 0}\n")
    with pytest.raises(ConfigError, match=r"etl\.yaml: download\.deadline_s=0"):
        load_settings()
    (configs / "etl.yaml").write_text("download: {deadline: 30}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'download\.deadline' \(did you mean 'deadline_s'\?\)"):
        load_settings()


BAD_SYMBOLS = ["x/../../../outside/PWNED", "../BTCUSDT", "BTC/USDT", "btcusdt", "B", "BTC USDT", "A" * 31]


@pytest.mark.parametrize("symbol", BAD_SYMBOLS)
def test_a_symbol_variable_outside_the_rule_fails_at_load(configs, clean_env, symbol):
    clean_env.setenv("QUANTGOD_SYMBOL", symbol)
    with pytest.raises(ConfigError, match=r"QUANTGOD_SYMBOL=.*must match \^\[A-Z0-9\]\{2,30\}\$"):
        load_settings()


@pytest.mark.parametrize("symbol", BAD_SYMBOLS)
def test_a_symbol_in_etl_yaml_outside_the_rule_fails_at_load(configs, symbol):
    (configs / "etl.yaml").write_text(f"symbol: {symbol!r}\n")
    with pytest.raises(ConfigError, match=r"etl\.yaml: symbol=.*must match \^\[A-Z0-9\]\{2,30\}\$") as info:
        load_settings()
    assert "QUANTGOD_SYMBOL" not in str(info.value)


def test_good_symbols_load(configs, clean_env):
    (configs / "etl.yaml").write_text("symbol: ETHUSDT\n")
    assert load_settings().symbol == "ETHUSDT"
    clean_env.setenv("QUANTGOD_SYMBOL", "1000PEPEUSDT")  # the variable wins, checked by the same rule
    assert load_settings().symbol == "1000PEPEUSDT"


def test_labelling_rules_fail_at_load_naming_the_file(tmp_path, monkeypatch):
    for text, words in (("lookahead: 0\n", "lookahead must be a whole number of minutes >= 1"),
                        ("threshold_short: 0.01\n", "need threshold_short <= 0 <= threshold_long")):
        (tmp_path / "labelling.yaml").write_text(text)
        monkeypatch.setenv("QUANTGOD_CONFIG_DIR", str(tmp_path))
        with pytest.raises(ConfigError) as info:
            load_settings()
        assert str(info.value).startswith(f"{tmp_path / 'labelling.yaml'}: ") and words in str(info.value)


def test_evaluation_settings_are_checked_at_load(configs):
    """The metric, its direction, class weights and the old split shares fail at load, naming the file."""
    from quantgod_assets.settings import ConfigError, load_settings

    opt, training = configs / "optimization.yaml", configs / "training.yaml"
    original_opt, original_training = opt.read_text(), training.read_text()

    opt.write_text(original_opt.replace("metric: f1_macro ", "metric: val_f1_weighted "))
    assert load_settings().optimization.metric == "f1_weighted"  # the older val_ spelling still reads
    opt.write_text(original_opt.replace("metric: f1_macro ", "metric: sharpe "))
    with pytest.raises(ConfigError, match=r"optimization\.yaml.*metric"):
        load_settings()
    opt.write_text(original_opt.replace("direction: null ", "direction: minimize "))
    with pytest.raises(ConfigError, match="contradicts metric 'f1_macro'"):
        load_settings()
    opt.write_text(original_opt.replace("metric: f1_macro ", "metric: loss ").replace("direction: null ",
                                                                                      "direction: minimize "))
    assert load_settings().optimization.goal == "minimize"
    opt.write_text(original_opt)

    training.write_text(original_training.replace("class_weights: auto ", "class_weights: [2.0, 1.0] "))
    with pytest.raises(ConfigError, match="class_weights"):
        load_settings()
    training.write_text(original_training.replace("  test: 0.15 ", "  train: 0.7\n  test: 0.15 "))
    with pytest.raises(ConfigError, match="walk-forward folds"):
        load_settings()
