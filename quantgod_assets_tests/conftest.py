"""Shared fixtures for the platform tests (short generated days, a QuantGod environment in temp
folders) and the test tiers: every test gets one tier marker from its module (TIERS below).
Plain builders live in builders.py."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from .builders import BAD_DAY, DAY1, DAY2, REPO, SHORT_DAY_S, QuantGodEnv, make_env

__all__ = ["BAD_DAY", "DAY1", "DAY2", "REPO", "SHORT_DAY_S", "QuantGodEnv", "make_env"]


@pytest.fixture(scope="session")
def short_archives(tmp_path_factory) -> dict[dt.date, Path]:
    """Two good short days and one truncated (corrupt ZIP) day, generated once per session."""
    from quantgod_assets.orderbook.synthetic import generate_days

    out = tmp_path_factory.mktemp("archives")
    good = generate_days(DAY1, 2, out / "good", seed=3, duration_s=SHORT_DAY_S)
    bad = generate_days(BAD_DAY, 1, out / "bad", seed=4, duration_s=SHORT_DAY_S, faults=("truncated",))
    return {DAY1: good[0], DAY2: good[1], BAD_DAY: bad[0]}


@pytest.fixture
def qg_env(tmp_path, short_archives, monkeypatch) -> QuantGodEnv:
    """QUANTGOD_* variables pointing at temp folders holding the short archives (gap limits relaxed)."""
    env = make_env(tmp_path, short_archives)
    for key, value in env.env().items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture(scope="session")
def postgres_url():
    """A PostgreSQL server: QUANTGOD_TEST_POSTGRES (CI starts one with `.ci/postgres`), else one
    started here from Debian's package and stopped at the end. Where none can be started the tests
    skip with the reason, unless QUANTGOD_REQUIRE_POSTGRES is set (CI), where they fail."""
    import os
    import subprocess

    given = os.environ.get("QUANTGOD_TEST_POSTGRES")
    if given:
        yield given
        return
    started = subprocess.run(["bash", str(REPO / ".ci" / "postgres")], capture_output=True, text=True,
                             env={**os.environ, "QUANTGOD_PG_PORT": "55433"}, timeout=600, check=False)
    if started.returncode != 0:
        reason = f"no PostgreSQL could be started (.ci/postgres: {started.stderr.strip()[-300:]})"
        if os.environ.get("QUANTGOD_REQUIRE_POSTGRES"):
            pytest.fail(reason)
        pytest.skip(reason)
    url, data = started.stdout.split()
    try:
        yield url
    finally:
        subprocess.run(["bash", str(REPO / ".ci" / "postgres"), "stop", data], capture_output=True, check=False)


# ---------------------------------------------------------------------------------------------
# Tiers: every test gets exactly one of these markers, from its module (TIERS) or, for the few
# tests whose kind differs from the rest of their module, from TIER_OF_TEST. `pytest -m unit`,
# `-m "not slow"`, `-m "dagster or cli"` select by them; test_tiers.py fails when a test has none.
#   unit      plain functions (numba engine, frames, settings, plots, metrics, small torch modules)
#   dagster   Dagster definitions and in-process `dagster.materialize`
#   cli       the project's programs in other processes: quantgod / dagster CLI, webserver,
#             Optuna worker processes, the browser
#   training  trains torch models, runs Optuna studies or logs to MLflow (in-process)
# SLOW lists the tests that take more than ~3 s on a 2-core machine (`pytest --durations=0`):
# `pytest -m "not slow"` is the inner loop, the plain `pytest` (CI) runs everything.

TIER_NAMES = ("unit", "dagster", "cli", "training")

TIERS = {
    "test_archive.py": "unit",
    "test_archive_recovery.py": "unit",
    "test_assets_book.py": "dagster",
    "test_assets_labels.py": "dagster",
    "test_assets_ml.py": "training",
    "test_assets_predictions.py": "dagster",
    "test_automation.py": "dagster",
    "test_cli_dagster.py": "cli",
    "test_cli_errors.py": "cli",
    "test_daemon.py": "cli",
    "test_postgres.py": "cli",
    "test_daily.py": "unit",
    "test_debug_plots.py": "unit",
    "test_inline_pictures.py": "dagster",
    "test_instruments.py": "unit",
    "test_definitions.py": "dagster",
    "test_deploy.py": "dagster",
    "test_end_to_end_signal.py": "training",
    "test_labelling.py": "unit",
    "test_logs.py": "unit",
    "test_plots.py": "unit",
    "test_progress.py": "unit",
    "test_secrets.py": "unit",
    "test_secrets_end_to_end.py": "training",
    "test_settings.py": "unit",
    "test_tiers.py": "unit",
    "test_ui_browser.py": "cli",
    "ml/test_backtest.py": "unit",
    "ml/test_baselines.py": "unit",
    "ml/test_dataset.py": "unit",
    "ml/test_features.py": "unit",
    "ml/test_models.py": "unit",
    "ml/test_predict.py": "training",
    "ml/test_live.py": "unit",
    "ml/test_instruments.py": "unit",
    "ml/test_splits.py": "unit",
    "ml/test_tracking.py": "training",
    "ml/test_train.py": "training",
    "ml/test_tune.py": "training",
    "ml/test_uncertainty.py": "unit",
    "orderbook/test_engine_vs_reference.py": "unit",
    "orderbook/test_etl.py": "unit",
    "orderbook/test_reader.py": "unit",
    "orderbook/test_reference.py": "unit",
    "orderbook/test_snapshot_agreement.py": "unit",
    "orderbook/test_replay.py": "unit",
    "orderbook/test_strict_input.py": "unit",
    "orderbook/test_synthetic.py": "unit",
    "orderbook/test_synthetic_faults.py": "unit",
    "orderbook/test_synthetic_instruments.py": "unit",
}

# "module::test function" (all its parametrizations) -> tier, where it differs from the module's
TIER_OF_TEST = {
    "test_assets_labels.py::test_cli_range_labels_two_days_in_one_run": "cli",
    "test_assets_ml.py::test_model_through_the_cli_with_default_stores": "cli",
    "test_deploy.py::test_two_worker_processes_share_a_journal_study": "cli",
    "test_plots.py::test_cli_plots_writes_the_days_pictures": "cli",
    "test_plots.py::test_cli_plots_on_a_converted_generated_day_without_labels": "cli",
    "test_plots.py::test_cli_plots_missing_day_names_the_file": "cli",
    "test_plots.py::test_cli_generate_reports_progress_and_matches_generate_days": "cli",
    "test_plots.py::test_cli_generate_signal_zero_writes_null_days_and_every_option_says_its_default": "cli",
    "orderbook/test_etl.py::test_cli_etl_prints_one_summary_line": "cli",
    "orderbook/test_etl.py::test_cli_etl_names_the_bad_file": "cli",
    "ml/test_predict.py::test_cli_predict_writes_the_day_under_the_model_version": "cli",
    "test_cli_errors.py::test_a_bug_keeps_its_traceback": "unit",
    "test_automation.py::test_the_sensor_is_off_until_the_setting_turns_it_on": "cli",
    "test_instruments.py::test_two_instruments_over_three_days_in_one_command_one_corrupt_day_fails_alone": "cli",
    "test_instruments.py::test_a_wrong_training_instrument_fails_the_model_step_in_one_line": "dagster",
    "test_instruments.py::test_too_few_windows_fail_the_model_step_in_one_line": "dagster",
    "test_instruments.py::test_a_one_symbol_data_folder_is_refused_until_migrated_then_feeds_the_platform": "cli",
    "test_debug_plots.py::test_cli_plots_from_to_prints_every_file": "cli",
    "test_debug_plots.py::test_write_debug_plots_draws_the_trained_models_pictures_from_its_plot_data": "training",
    "orderbook/test_synthetic_instruments.py::test_generate_cli_symbol_and_category": "cli",
    "test_cli_errors.py::test_os_error_lines_name_the_file_written": "unit",
}

# "module::test function" above ~3 s on a 2-core machine (`pytest --durations=0`, seconds measured
# there in the comments; `@pytest.mark.slow` written in a module counts as well)
SLOW = {
    "test_assets_ml.py::test_optimization_then_model_in_process",  # 25
    "test_secrets_end_to_end.py::test_a_planted_password_reaches_no_output_of_a_successful_search_and_model",  # 41
    "ml/test_train.py::test_trained_model_beats_the_majority_baseline",  # 24
    "test_end_to_end_signal.py::test_null_days_give_no_edge_and_promote_nothing",  # 60
    "orderbook/test_engine_vs_reference.py::test_engine_matches_reference_on_random_streams",  # 20
    "ml/test_tracking.py::test_study_has_a_parent_run_and_a_nested_run_per_trial",  # 15
    "orderbook/test_synthetic.py::test_full_day_at_100ms_ends_with_next_day_snapshot",  # 15
    "test_assets_ml.py::test_model_through_the_cli_with_default_stores",  # 12+
    "ml/test_tracking.py::test_final_model_run_and_champion_alias",  # 9
    "test_cli_dagster.py::test_cli_one_day",  # 9
    "orderbook/test_synthetic.py::test_full_days_end_with_the_next_days_snapshot",  # 8.5
    "test_cli_dagster.py::test_cli_blocking_check_failure_ends_the_run_failed",  # 8
    "test_cli_dagster.py::test_cli_two_day_range_is_one_run",  # 8
    "test_cli_dagster.py::test_cli_range_with_a_corrupt_day_finishes_the_others",  # 8
    "test_cli_dagster.py::test_cli_missing_day_and_missing_root_fail_in_one_line",  # 12 (two CLI runs)
    "test_cli_dagster.py::test_cli_a_worker_killed_mid_range_costs_no_day",  # 25-35 (generates 3 days)
    "test_cli_errors.py::test_generate_full_disk_and_out_a_file",  # 4.6
    "test_cli_errors.py::test_etl_full_disk_names_the_output_and_leaves_nothing",  # 3
    "test_assets_labels.py::test_cli_range_labels_two_days_in_one_run",  # 7
    "ml/test_tune.py::test_study_file_holds_the_trials_and_resumes",  # 7
    "orderbook/test_synthetic.py::test_imbalance_leads_the_next_hour",  # 7
    "test_plots.py::test_cli_plots_writes_the_days_pictures",  # 6
    "ml/test_predict.py::test_cli_predict_writes_the_day_under_the_model_version",  # 5 (a CLI run)
    "ml/test_tune.py::test_a_study_with_only_pruned_trials_fails_clearly",  # 3.5
    "test_deploy.py::test_two_worker_processes_share_a_journal_study",  # 3.5
    "test_ui_browser.py::test_ui_shows_the_asset_graph_and_a_materialized_partition",  # CLI run + webserver + browser
    "test_tiers.py::test_selecting_by_tier_leaves_no_test_out",  # collects the whole suite in a subprocess
    "test_automation.py::test_the_sensor_is_off_until_the_setting_turns_it_on",  # 2 x a definitions load
    "test_automation.py::test_the_sensor_asks_for_new_days_then_relabels_the_day_before",  # two book runs
}

TESTS_DIR = Path(__file__).resolve().parent


def tier_key(item: pytest.Item) -> tuple[str, str]:
    """(module path relative to quantgod_assets_tests/, test function name without parameters)."""
    module = Path(str(item.path)).resolve().relative_to(TESTS_DIR).as_posix()
    return module, getattr(item, "originalname", item.name)


COLLECTED_TIERS = pytest.StashKey[dict[str, list[str]]]()


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by these markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    seen = config.stash.setdefault(COLLECTED_TIERS, {})
    for item in items:
        module, name = tier_key(item)
        tier = TIER_OF_TEST.get(f"{module}::{name}", TIERS.get(module))
        if tier is not None:
            item.add_marker(getattr(pytest.mark, tier))
        if f"{module}::{name}" in SLOW and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)
        seen[item.nodeid] = [m.name for m in item.iter_markers() if m.name in TIER_NAMES]


@pytest.fixture
def collected_tiers(request) -> dict[str, list[str]]:
    """node id -> its tier markers, for every test collected in this session (before `-m`/`-k`)."""
    return request.config.stash[COLLECTED_TIERS]


@pytest.fixture
def tier_tables() -> dict[str, object]:
    return {"dir": TESTS_DIR, "names": TIER_NAMES, "tiers": TIERS, "tier_of_test": TIER_OF_TEST, "slow": SLOW}
