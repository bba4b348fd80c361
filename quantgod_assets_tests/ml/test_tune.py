"""The Optuna study: persisted trials, resume, pruning on an injected CUDA OOM, best_params.json."""

from __future__ import annotations

import json
import logging

import optuna
import pytest
import torch

from quantgod_assets.ml import tune
from quantgod_assets.ml.lines import lines_to
from quantgod_assets.ml.tune import (
    format_trial_start,
    load_best_params,
    run_study,
    suggest_params,
)
from quantgod_assets.settings import OptimizationSettings, TrainingSettings
from quantgod_assets_tests.builders import SPACE, make_datasets


class Lines(logging.Handler):
    """The ML lines (`lines_to`) collected into a list."""

    def __init__(self, lines: list[str]):
        super().__init__()
        self.lines = lines

    def emit(self, record):
        self.lines.append(record.getMessage())


def search(space=SPACE, **changes) -> OptimizationSettings:
    return OptimizationSettings.model_validate({"search_space": space, **changes})


CPU = TrainingSettings(device="cpu")


def run(tmp_path, lines, n_trials=2):
    optimization = search(
        n_trials=n_trials,
        storage=f"sqlite:///{tmp_path / 'optuna_study.db'}",
        seed=7,
        pruner={"n_startup_trials": 5, "n_warmup_steps": 0},  # no pruning among these few trials
        epochs_per_trial=2,
    )
    with lines_to(Lines(lines)):
        return run_study(make_datasets, optimization, CPU, "labels_h15_t8",
                         best_params_path=tmp_path / "optimization" / "best_params.json")


def load(tmp_path):
    return optuna.load_study(study_name="labels_h15_t8", storage=f"sqlite:///{tmp_path / 'optuna_study.db'}")


def test_study_file_holds_the_trials_and_resumes(tmp_path):
    lines: list[str] = []
    best = run(tmp_path, lines)
    study = load(tmp_path)
    assert len(study.trials) == 2
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    # each trial reported its validation F1 macro once per epoch
    assert all(sorted(t.intermediate_values) == [1, 2] for t in study.trials)
    assert best["batch_size"] == 128 and best["arch"] in ("tcn_lstm", "transformer")
    saved = json.loads((tmp_path / "optimization" / "best_params.json").read_text())
    assert saved["best_value"] == pytest.approx(study.best_value)
    assert load_best_params(tmp_path / "optimization" / "best_params.json") == best

    text = "\n".join(lines)
    assert "Trial 0 START | " in text and "Trial 1 START | " in text
    assert "Trial 0, Epoch 2/2 | f1_macro: " in text and "| F1 [S/N/B]: [" in text
    assert "Best trial " in text
    assert saved["metric"] == "f1_macro" and saved["best_fold_scores"] == [pytest.approx(study.best_value)]

    # every run ADDS n_trials to the study it names
    lines2: list[str] = []
    run(tmp_path, lines2, n_trials=1)
    assert len(load(tmp_path).trials) == 3
    assert any("holds 2 finished trials: adding 1" in line for line in lines2)
    assert any("Trial 2 START" in line for line in lines2)


class TwoFolds:
    """Two walk-forward folds of planted-signal windows, shaped like `data.PreparedData`."""

    def __init__(self, params):
        self.pairs = [make_datasets(params)[:2], make_datasets({**params, "seed": 1})[:2]]
        self.folds = [None, None]
        self.n_features = make_datasets(params)[2]

    def fold_datasets(self, k):
        return self.pairs[k]


def test_a_trial_averages_its_folds_and_reports_every_fold_epoch(tmp_path):
    optimization = search(n_trials=1, storage=f"sqlite:///{tmp_path / 's.db'}", seed=3, epochs_per_trial=2,
                          pruner={"n_startup_trials": 5, "n_warmup_steps": 0})
    lines: list[str] = []
    with lines_to(Lines(lines)):
        run_study(TwoFolds, optimization, CPU, "folds", best_params_path=tmp_path / "best_params.json")
    trial = optuna.load_study(study_name="folds", storage=f"sqlite:///{tmp_path / 's.db'}").trials[0]
    scores = trial.user_attrs["fold_scores"]
    assert len(scores) == 2 and trial.value == pytest.approx(sum(scores) / 2)
    # fold k's epoch e is step k * epochs + e: the pruner compares trials at the same fold and epoch
    assert sorted(trial.intermediate_values) == [1, 2, 3, 4]
    assert any("Trial 0 fold 2/2, Epoch 2/2" in line for line in lines)
    assert any("mean f1_macro over 2 fold(s)" in line for line in lines)


def test_the_study_follows_the_metric_and_its_direction(tmp_path):
    optimization = search(n_trials=1, storage=f"sqlite:///{tmp_path / 's.db'}", seed=3, epochs_per_trial=2,
                          metric="loss", pruner={"n_startup_trials": 5, "n_warmup_steps": 0})
    run_study(make_datasets, optimization, CPU, "by_loss")
    study = optuna.load_study(study_name="by_loss", storage=f"sqlite:///{tmp_path / 's.db'}")
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    trial = study.trials[0]
    # the value is the lowest validation loss of the epochs, not an F1
    assert trial.value == pytest.approx(min(trial.intermediate_values.values()))


def test_cuda_oom_prunes_the_trial_and_frees_memory(tmp_path, monkeypatch):
    freed = []
    monkeypatch.setattr(tune, "_free_accelerator_memory", lambda: freed.append(True))
    real_train = tune.train_model
    calls = {"n": 0}

    def train_or_oom(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(tune, "train_model", train_or_oom)
    lines: list[str] = []
    run(tmp_path, lines)
    trials = load(tmp_path).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.COMPLETE]
    assert "Trial 0 — CUDA OOM! Clearing cache and pruning..." in lines
    assert freed == [True]


def test_free_memory_empties_the_cuda_cache(monkeypatch):
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    tune._free_accelerator_memory()
    assert emptied == [True]


def test_a_study_with_only_pruned_trials_fails_clearly(tmp_path, monkeypatch):
    def always_oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(tune, "train_model", always_oom)
    with pytest.raises(RuntimeError, match="no completed trial"):
        run(tmp_path, [])


def test_median_pruner_prunes_a_bad_trial(tmp_path):
    """A trial far below the median of earlier ones at the same epoch is stopped there."""
    study = tune.make_study(f"sqlite:///{tmp_path / 's.db'}", "p", seed=0, n_startup_trials=1, n_warmup_steps=0)
    for value in (0.6, 0.62):
        trial = study.ask()
        for step in (1, 2):
            trial.report(value, step)
        study.tell(trial, value)
    trial = study.ask()
    trial.report(0.1, 1)
    assert trial.should_prune()


def test_suggest_params_conditions_fixed_and_types():
    trial = optuna.trial.FixedTrial({"arch": "transformer", "d_model": 16, "n_heads": 2, "n_layers": 2,
                                     "seq_len": 8, "lr": 0.002, "dropout": 0.1})
    params = suggest_params(trial, SPACE)
    assert "tcn_channels" not in params and params["d_model"] == 16 and params["batch_size"] == 128
    with pytest.raises(ValueError, match="unknown type"):
        suggest_params(trial, {"x": {"type": "nope"}})


def test_trial_start_line_matches_the_team_format():
    line = format_trial_start(3, {"tcn_channels": 64, "lstm_hidden": 256, "seq_len": 720, "lr": 0.000312,
                                  "arch": "tcn_lstm"})
    assert line.startswith("Trial 3 START | tcn=64, lstm=256, seq=720, lr=0.000312")


def test_invalid_head_count_is_pruned_not_fatal(tmp_path):
    space = {"arch": {"type": "fixed", "value": "transformer"},
             "d_model": {"type": "categorical", "choices": [10]}, "n_heads": {"type": "categorical", "choices": [4]},
             "n_layers": 1, "seq_len": 8, "batch_size": 128}
    lines: list[str] = []
    optimization = search(space, n_trials=1, storage=f"sqlite:///{tmp_path / 'o.db'}", epochs_per_trial=1)
    with pytest.raises(RuntimeError, match="no completed trial"), lines_to(Lines(lines)):
        run_study(make_datasets, optimization, CPU, "bad")
    assert any("invalid parameters" in line for line in lines)
