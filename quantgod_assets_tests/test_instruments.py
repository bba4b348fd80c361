"""Several instruments on one platform: settings, archive layout by category, per-instrument assets
through the real Dagster CLI, and the one-symbol layout moved by `quantgod migrate`."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys

import dagster as dg
import polars as pl
import pytest
import yaml

from quantgod_assets.archive import archive_url, download_archive, find_archive
from quantgod_assets.settings import ConfigError, load_settings

from .builders import DAY1, SHORT_DAY_S, ArchiveServer, make_env, write_pre_days

DAY3 = DAY1 + dt.timedelta(days=2)
TWO = [{"symbol": "BTCUSDT", "category": "linear"},
       {"symbol": "ETHUSDT", "category": "linear", "first_day": "2025-03-01"}]


def _write_instruments(config_dir, listed, **training):
    etl = config_dir / "etl.yaml"
    data = yaml.safe_load(etl.read_text())
    data.pop("symbol", None)
    data["instruments"] = listed
    etl.write_text(yaml.safe_dump(data))
    if training:
        path = config_dir / "training.yaml"
        tr = yaml.safe_load(path.read_text())
        tr.update(training)
        path.write_text(yaml.safe_dump(tr))


# ---------------------------------------------------------------------------------------------
# Settings


@pytest.fixture
def configs(tmp_path, monkeypatch):
    from .builders import REPO

    folder = tmp_path / "configs"
    shutil.copytree(REPO / "configs", folder)
    for key in ("QUANTGOD_SYMBOL", "QUANTGOD_RAW_ROOT", "QUANTGOD_DATA_DIR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("QUANTGOD_CONFIG_DIR", str(folder))
    monkeypatch.setenv("QUANTGOD_DATA_DIR", str(tmp_path / "data"))
    return folder


def test_instruments_each_get_their_folders_first_day_and_training_set(configs, tmp_path):
    _write_instruments(configs, [*TWO, {"symbol": "BTCUSDT", "category": "spot"}],
                       instruments=["BTCUSDT_linear", "ETHUSDT"], unseen_instruments=["BTCUSDT_spot"])
    s = load_settings()
    assert [i.key for i in s.instruments] == ["BTCUSDT_linear", "ETHUSDT_linear", "BTCUSDT_spot"]
    assert s.instruments[0].first_day == s.etl.partitions_start and str(s.instruments[1].first_day) == "2025-03-01"
    eth = s.for_instrument("ETHUSDT")
    assert eth.symbol == "ETHUSDT"
    assert eth.paths.preprocessed_dir == tmp_path / "data" / "L2" / "linear" / "ETHUSDT" / "pre_processed"
    spot = s.for_instrument("BTCUSDT_spot")
    assert spot.paths.labelled_dir == tmp_path / "data" / "L2" / "spot" / "BTCUSDT" / "labelled"
    # models and searches belong to the training set, named after it, the same for every instrument
    assert s.model_key == "BTCUSDT_linear+ETHUSDT_linear"
    assert eth.paths.models_dir.name == spot.paths.optimization_dir.name == s.model_key
    assert s.training.mlflow.registered_model == "quantgod_BTCUSDT_linear+ETHUSDT_linear"
    assert [i.key for i in s.unseen_instruments] == ["BTCUSDT_spot"]
    with pytest.raises(ConfigError, match="ambiguous"):
        s.for_instrument("BTCUSDT")  # linear or spot: the key must say


@pytest.mark.parametrize(("listed", "training", "message"), [
    ([{"symbol": "BTCUSDT"}, {"symbol": "BTCUSDT", "category": "linear"}], {}, "BTCUSDT_linear listed twice"),
    ([{"symbol": "BTCUSDT", "category": "futures"}], {}, "category"),
    ([{"symbol": "btc"}], {}, "must match"),
    (TWO, {"instruments": ["SOLUSDT"]}, "'SOLUSDT' is not a configured instrument"),
    (TWO, {"instruments": ["BTCUSDT"], "unseen_instruments": ["BTCUSDT"]}, "also training instruments"),
])
def test_wrong_instruments_fail_at_load_naming_the_entry(configs, listed, training, message):
    _write_instruments(configs, listed, **training)
    with pytest.raises(ConfigError, match=message):
        load_settings()


def test_the_symbol_variable_is_a_one_instrument_shortcut(configs, monkeypatch):
    _write_instruments(configs, TWO, instruments=["BTCUSDT", "ETHUSDT"], unseen_instruments=[])
    monkeypatch.setenv("QUANTGOD_SYMBOL", "ETHUSDT")
    one = load_settings()
    assert [i.key for i in one.instruments] == ["ETHUSDT_linear"]
    assert one.model_key == "ETHUSDT_linear"  # trained on it, whatever training.yaml lists
    monkeypatch.setenv("QUANTGOD_SYMBOL", "SOLUSDT_spot")
    assert [i.key for i in load_settings().instruments] == ["SOLUSDT_spot"]
    monkeypatch.setenv("QUANTGOD_SYMBOL", "SOLUSDT_options")
    with pytest.raises(ConfigError, match=r"QUANTGOD_SYMBOL='SOLUSDT_options'.*unknown category"):
        load_settings()


# ---------------------------------------------------------------------------------------------
# The archive by category


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"zip")
    return path


def test_spot_and_linear_days_of_one_symbol_are_told_apart_by_folder(tmp_path):
    name = f"{DAY1}_BTCUSDT_ob200.data.zip"
    linear = _touch(tmp_path / "2025" / name)
    spot = _touch(tmp_path / "spot" / "BTCUSDT" / "2025" / name)
    assert find_archive(tmp_path, DAY1, "BTCUSDT") == linear
    assert find_archive(tmp_path, DAY1, "BTCUSDT", category="spot") == spot
    linear.unlink()  # the linear search never takes the spot file, even walking the whole tree
    assert find_archive(tmp_path, DAY1, "BTCUSDT") is None
    assert find_archive(tmp_path, DAY1, "BTCUSDT", category="inverse") is None


def test_the_download_url_and_folder_follow_the_category(tmp_path):
    assert archive_url("https://quote-saver.bycsi.com/orderbook", DAY1, "ETHUSDT", 200, "spot") == (
        "https://quote-saver.bycsi.com/orderbook/spot/ETHUSDT/2025-03-14_ETHUSDT_ob200.data.zip")
    # the older setting, ending in the linear folder, still works for every category
    assert archive_url("https://quote-saver.bycsi.com/orderbook/linear", DAY1, "ETHUSDT", 500, "inverse") == (
        "https://quote-saver.bycsi.com/orderbook/inverse/ETHUSDT/2025-03-14_ETHUSDT_ob500.data.zip")
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{DAY1}_ETHUSDT_ob200.data", b"{}\r\n")
    with ArchiveServer.running() as server:
        server.files[f"/orderbook/spot/ETHUSDT/{DAY1}_ETHUSDT_ob200.data.zip"] = buffer.getvalue()
        result = download_archive(DAY1, "ETHUSDT", tmp_path, server.base_url, category="spot")
    assert result.path == tmp_path / "spot" / "ETHUSDT" / "2025" / f"{DAY1}_ETHUSDT_ob200.data.zip"
    assert find_archive(tmp_path, DAY1, "ETHUSDT", category="spot") == result.path


# ---------------------------------------------------------------------------------------------
# Through the real Dagster CLI


@pytest.fixture(scope="module")
def two_instrument_archives(tmp_path_factory):
    from quantgod_assets.orderbook.synthetic import generate_days

    out = tmp_path_factory.mktemp("instrument_archives")
    btc = generate_days(DAY1, 3, out / "btc", seed=11, duration_s=SHORT_DAY_S)
    eth = generate_days(DAY1, 3, out / "eth", seed=12, duration_s=SHORT_DAY_S, symbol="ETHUSDT")
    return btc, eth


def _run(env, command, variables) -> subprocess.CompletedProcess:
    return subprocess.run(command, env={**os.environ, **env.env(), **variables}, cwd=env.root,
                          capture_output=True, text=True, timeout=300)


def _cli(env, *args, **variables) -> subprocess.CompletedProcess:
    """`dagster asset materialize` as a user types it; `variables` over the env's QUANTGOD_* ones."""
    return _run(env, [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "quantgod_assets.definitions",
                      *args], variables)


@pytest.mark.slow
def test_two_instruments_over_three_days_in_one_command_one_corrupt_day_fails_alone(tmp_path, two_instrument_archives):
    btc, eth = two_instrument_archives
    env = make_env(tmp_path, {})
    _write_instruments(env.config_dir, TWO)
    for path in btc:
        shutil.copyfile(path, _touch(env.raw_root / "2025" / path.name))
    for path in eth:
        target = _touch(env.raw_root / "linear" / "ETHUSDT" / "2025" / path.name)  # the archive's own layout
        shutil.copyfile(path, target)
    bad = env.raw_root / "linear" / "ETHUSDT" / "2025" / eth[1].name
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # ETHUSDT's middle day: a truncated ZIP
    both = {"QUANTGOD_SYMBOL": ""}  # the instruments: list, not the one-symbol shortcut
    done = _cli(env, "--select", "key:*/preprocessed_book", "--partition-range", f"{DAY1}...{DAY3}", **both)
    assert done.returncode != 0  # one (instrument, day) failed ...
    output = done.stdout + done.stderr
    assert f"{DAY1 + dt.timedelta(days=1)}" in output and "ETHUSDT" in output
    days = [DAY1 + dt.timedelta(days=k) for k in range(3)]
    for day in days:  # ... and every other one landed
        assert pl.read_parquet(env.preprocessed(day)).height == 1440
    assert [env.preprocessed(d, "linear/ETHUSDT").is_file() for d in days] == [True, False, True]
    eth_frame = pl.read_parquet(env.preprocessed(DAY1, "linear/ETHUSDT"))
    btc_frame = pl.read_parquet(env.preprocessed(DAY1))
    assert not eth_frame.equals(btc_frame)  # its own market, not a copy

    with dg.DagsterInstance.from_config(str(env.dagster_home)) as instance:
        for key, expected in (("BTCUSDT_linear", 3), ("ETHUSDT_linear", 2)):
            asset = dg.AssetKey([key, "preprocessed_book"])
            records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=asset), limit=10).records
            assert len(records) == expected
            checks = instance.event_log_storage.get_asset_check_execution_history(
                dg.AssetCheckKey(asset, "schema"), limit=10)
            passed = {c.partition for c in checks
                      if c.event and getattr(c.event.dagster_event.event_specific_data, "passed", False)}
            assert len(passed) == expected  # a passing check per landed (instrument, day)

    _cli(env, "--select", "preprocessed_book_days", **both)
    with dg.DagsterInstance.from_config(str(env.dagster_home)) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("preprocessed_book_days"))
        meta = event.asset_materialization.metadata
        assert meta["BTCUSDT_linear_days"].value == 3 and meta["ETHUSDT_linear_days"].value == 2
        [check] = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey("preprocessed_book_days"), "days_complete"), limit=1)
        evaluation = check.event.dagster_event.event_specific_data
        assert not evaluation.passed and "ETHUSDT_linear: 1 missing day(s)" in evaluation.description
        assert "BTCUSDT" not in evaluation.description  # the complete instrument is not blamed



@pytest.mark.slow
def test_a_one_symbol_data_folder_is_refused_until_migrated_then_feeds_the_platform(tmp_path):
    env = make_env(tmp_path, {})
    env.raw_root.mkdir(parents=True)  # a mounted archive without these days: nothing can be reprocessed
    # the layout before instruments: the books in data/L2/pre_processed
    legacy = env.data_dir / "L2" / "pre_processed"
    write_pre_days(legacy, [DAY1, DAY1 + dt.timedelta(days=1)])
    before = {p.name: p.read_bytes() for p in legacy.glob("*.parquet")}

    done = _cli(env, "--select", "key:*/preprocessed_book", "--partition", str(DAY1))
    assert done.returncode != 0
    assert "run `quantgod migrate`" in done.stdout + done.stderr  # refused, not silently reprocessed
    assert {p.name: p.read_bytes() for p in legacy.glob("*.parquet")} == before

    migrated = _run(env, [sys.executable, "-m", "quantgod_assets.cli", "migrate"], {})
    assert migrated.returncode == 0, migrated.stderr
    assert "BTCUSDT_linear: moved 2 file(s)" in migrated.stdout
    assert {p.name: p.read_bytes() for p in env.preprocessed_dir().glob("*.parquet")} == before  # the same bytes
    assert not legacy.exists()
    again = _run(env, [sys.executable, "-m", "quantgod_assets.cli", "migrate"], {})
    assert again.returncode == 0 and "moved 0 file(s)" in again.stdout
    # a day in both places: neither copy is overwritten, the command says so in one line and fails
    write_pre_days(legacy, [DAY1])
    clash = _run(env, [sys.executable, "-m", "quantgod_assets.cli", "migrate"], {})
    assert clash.returncode == 2 and "Traceback" not in clash.stderr
    assert clash.stderr.strip().count("\n") == 0 and "2025-03-14.parquet: not moved" in clash.stderr
    assert {p.name: p.read_bytes() for p in env.preprocessed_dir().glob("*.parquet")} == before
    (legacy / f"{DAY1}.parquet").unlink()

    # the moved books feed the labels
    done = _cli(env, "--select", "key:*/labelled_frame", "--partition", str(DAY1))
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    suffix = load_settings(env.config_dir).labelling.suffix
    labelled = pl.read_parquet(env.labelled_dir() / suffix / f"{DAY1}.parquet")
    assert labelled.height == 1440 and labelled["target"].drop_nulls().len() > 0


def test_a_wrong_training_instrument_fails_the_model_step_in_one_line(tmp_path, monkeypatch):
    from quantgod_assets.assets.ml import model

    from .builders import materialize

    env = make_env(tmp_path, {})
    for key, value in env.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("QUANTGOD_SYMBOL")  # etl.yaml's list, where training.yaml's entries are looked up
    training = env.config_dir / "training.yaml"
    data = yaml.safe_load(training.read_text())
    data["instruments"] = ["SOLUSDT"]  # not among etl.yaml's instruments
    training.write_text(yaml.safe_dump(data))
    result = materialize([model])
    assert not result.success
    failure = result.failure_data_for_node("model")
    text = failure.user_failure_data.description
    assert "training.yaml" in text and "'SOLUSDT' is not a configured instrument" in text
    assert failure.error is None or "ConfigError" not in str(failure.error.cause)  # a Failure, not a crash


def test_the_champion_predicts_only_the_instruments_it_trained_on(configs, tmp_path):
    from quantgod_assets.daily.predictions import produce_day

    _write_instruments(configs, TWO, instruments=["BTCUSDT"])
    settings = load_settings()
    champion = settings.paths.champion_path
    champion.parent.mkdir(parents=True)
    champion.write_bytes(b"bundle")  # refused before it is read
    outcome = produce_day(DAY1, settings.for_instrument("ETHUSDT"))
    assert not outcome.published
    assert "ETHUSDT_linear: the champion" in outcome.reason and "trained on BTCUSDT_linear only" in outcome.reason


def test_the_pictures_of_two_instruments_do_not_overwrite_each_other(configs, tmp_path):
    from quantgod_assets.debug_plots import write_debug_plots

    from .builders import write_pre_days

    _write_instruments(configs, TWO)
    settings = load_settings()
    written = []
    for key in ("BTCUSDT_linear", "ETHUSDT_linear"):
        own = settings.for_instrument(key)
        write_pre_days(own.paths.preprocessed_dir, [DAY1])
        written += write_debug_plots(own, DAY1, DAY1, tmp_path / "pictures")
    names = [p.name for p in written]
    assert f"BTCUSDT_linear_{DAY1}_micro_price.png" in names and f"ETHUSDT_linear_{DAY1}_micro_price.png" in names
    assert len(set(names)) == len(names)


def test_too_few_windows_fail_the_model_step_in_one_line(tmp_path, monkeypatch):
    from quantgod_assets.assets.ml import model
    from quantgod_assets.labelling import label_day_files

    from .builders import materialize

    env = make_env(tmp_path, {})
    for key, value in env.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("QUANTGOD_ML_PROFILE", "demo")
    env.set_profile("demo", seq_len=720)  # half a day a window: one day cannot hold folds and a test block
    write_pre_days(env.preprocessed_dir(), [DAY1])
    label_day_files(env.preprocessed_dir(), env.labelled_dir(), DAY1)
    result = materialize([model])
    assert not result.success
    text = result.failure_data_for_node("model").user_failure_data.description
    assert "too few usable windows" in text and "\n" not in text.strip()
