"""The training loop on a synthetic matrix with a planted signal, the one-file bundle, predict."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from quantgod_assets.ml.device import make_batches, pick_device, window_arrays
from quantgod_assets.ml.lines import lines_to
from quantgod_assets.ml.models import build_model
from quantgod_assets.ml.train import (
    EpochMetrics,
    TrainConfig,
    class_weights_for,
    classification_summary,
    evaluate,
    load_model,
    predict_logits,
    save_model,
    train_model,
)
from quantgod_assets_tests.builders import TensorWindows, planted_signal, split_windows


def macro_f1_of_majority(y_true):
    majority = np.bincount(y_true, minlength=3).argmax()
    return classification_summary(y_true, np.full_like(y_true, majority))["f1_macro"]


TINY = {"tcn_channels": 16, "lstm_hidden": 16, "dropout": 0.0, "seq_len": 16}


@pytest.fixture(scope="module")
def data():
    x, y = planted_signal()
    return x, y, split_windows(x, y, 16)


def test_window_batches_match_getitem(data):
    _x, _y, (train, _val, _test) = data
    assert window_arrays(train) is not None
    source = make_batches(train, 32, False, torch.device("cpu"))
    xb, yb = next(iter(source))
    for i in range(3):
        xi, yi = train[i]
        torch.testing.assert_close(xb[i], xi)
        assert int(yb[i]) == int(yi)
    assert source.placement == "host" and len(source) == -(-len(train) // 32)


def test_generic_dataset_goes_through_a_loader():
    ds = torch.utils.data.TensorDataset(torch.randn(10, 4, 2), torch.randint(0, 3, (10,)))
    source = make_batches(ds, 4, True, torch.device("cpu"))
    assert source.placement == "loader"
    assert sum(len(yb) for _xb, yb in source) == 10


def test_scaler_is_applied_in_batches():
    class Scaler:
        mean = np.array([1.0, -2.0])
        std = np.array([2.0, 4.0])

    feats = np.random.default_rng(1).standard_normal((20, 2)).astype(np.float32)
    ds = TensorWindows(feats, np.zeros(20, np.int64), np.arange(4, 20), 5, scaler=Scaler())
    xb, _ = next(iter(make_batches(ds, 8, False, torch.device("cpu"))))
    torch.testing.assert_close(xb[0], ds[0][0])


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_trained_model_beats_the_majority_baseline(data, tmp_path):
    x, _y, (train, val, test) = data
    torch.manual_seed(0)
    model = build_model("tcn_lstm", x.shape[1], TINY)
    cfg = TrainConfig(epochs=6, batch_size=64, lr=3e-3, patience=3, log_every=10, device="cpu",
                      checkpoint_path=str(tmp_path / "ckpt.pth"))
    handler = ListHandler()
    epochs_seen = []
    with lines_to(handler):
        result = train_model(model, train, val, cfg, on_epoch=epochs_seen.append)
    text = "\n".join(handler.lines)
    assert "Device: cpu | Parameters: " in text
    assert "Class weights (auto, inverse train priors): S " in text
    assert "✅ Best model saved (val f1_macro: " in text
    assert "F1 [S/N/B]: [" in text and "samples/s" in text and "Batch 10/" in text
    assert [m.epoch for m in epochs_seen] == [m.epoch for m in result.history]
    assert (tmp_path / "ckpt.pth").exists()
    assert result.best_f1_macro == max(m.f1_macro for m in result.history)
    assert result.metric == "f1_macro" and result.best_value == result.best_f1_macro

    scores = evaluate(model, test, torch.device("cpu"), batch_size=256)
    baseline = macro_f1_of_majority(scores["y_true"])
    assert scores["f1_macro"] > baseline + 0.15, (scores["f1_macro"], baseline)


def test_early_stopping_and_best_weights_restored(data):
    x, _y, (train, val, _test) = data
    torch.manual_seed(0)
    model = build_model("tcn_lstm", x.shape[1], TINY)
    handler = ListHandler()
    # lr 0: the model never changes, so after the first epoch there is never a gain
    with lines_to(handler):
        result = train_model(model, train, val, TrainConfig(epochs=10, batch_size=128, lr=0.0, min_lr=0.0,
                                                            patience=2, device="cpu"))
    assert result.stopped_early and len(result.history) == 3
    assert any("Early stopping" in line for line in handler.lines)


def test_transformer_trains_too(data):
    x, _y, (train, val, _test) = data
    model = build_model("transformer", x.shape[1], {"d_model": 16, "n_heads": 2, "n_layers": 1, "seq_len": 16})
    result = train_model(model, train, val, TrainConfig(epochs=1, batch_size=128, device="cpu"))
    assert result.history and 0.0 <= result.best_f1_macro <= 1.0


@pytest.mark.parametrize("arch", ["tcn_lstm", "transformer"])
def test_saved_model_reloads_and_gives_the_same_logits(data, tmp_path, arch):
    x, _y, (_train, _val, test) = data
    torch.manual_seed(3)
    model = build_model(arch, x.shape[1], {**TINY, "d_model": 16, "n_heads": 2, "n_layers": 1, "dropout": 0.1})
    # move the weights away from their init so a silent re-init would show
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    names = [f"f{i}" for i in range(x.shape[1])]
    scaler = {"mean": np.zeros(x.shape[1]), "std": np.ones(x.shape[1]), "names": names, "n_rows": 10}
    labels = {"horizon": 15, "threshold_bps": np.float64(8.0), "suffix": "h15_t8"}
    path = save_model(tmp_path / "models" / "quantgod_cloud_model.pth", model, None, names, scaler, labels,
                      {"f1_macro": np.float32(0.41)})
    assert [p.name for p in path.parent.iterdir()] == ["quantgod_cloud_model.pth"]

    reloaded, bundle = load_model(path)
    assert bundle["feature_names"] == names
    assert bundle["label_settings"]["horizon"] == 15
    assert bundle["scaler"]["std"] == [1.0] * x.shape[1]
    assert bundle["spec"] == model.spec
    np.testing.assert_array_equal(predict_logits(model, test), predict_logits(reloaded, test))
    windows = np.stack([test[i][0].numpy() for i in range(5)])
    np.testing.assert_array_equal(predict_logits(model, windows), predict_logits(reloaded, windows))


def test_save_refuses_mismatched_feature_names(tmp_path):
    model = build_model("tcn_lstm", 3, TINY)
    with pytest.raises(ValueError, match="feature names"):
        save_model(tmp_path / "m.pth", model, None, ["a", "b"], None, {}, {})


def test_classification_summary_by_hand():
    s = classification_summary(np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 1, 2, 0]))
    # SELL: tp 1, fp 1, fn 1 -> 0.5; NEUTRAL: tp 2, fp 1 -> 0.8; BUY: tp 1, fn 1 -> 2/3
    assert s["f1_sell"] == pytest.approx(0.5)
    assert s["f1_neutral"] == pytest.approx(0.8)
    assert s["f1_buy"] == pytest.approx(2 / 3)
    assert s["f1_macro"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert s["f1_weighted"] == pytest.approx(s["f1_macro"])  # equal supports
    assert s["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # predicted SELL twice (1 right), NEUTRAL 3 times (2 right), BUY once (right)
    assert [s["precision_sell"], s["precision_neutral"], s["precision_buy"]] == pytest.approx([0.5, 2 / 3, 1.0])
    assert [s["recall_sell"], s["recall_neutral"], s["recall_buy"]] == pytest.approx([0.5, 1.0, 0.5])
    assert s["balanced_accuracy"] == pytest.approx(2 / 3) and s["accuracy"] == pytest.approx(4 / 6)


def test_pick_device_prefers_what_exists():
    assert pick_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else pick_device().type
    assert pick_device("auto").type == expected


def test_device_copy_is_shared_and_released_with_the_matrix():
    import gc

    from quantgod_assets.ml import device as device_mod

    feats = np.ones((10, 3), dtype=np.float32)
    a = device_mod._device_copy(feats, torch.device("cpu"))
    b = device_mod._device_copy(feats, torch.device("cpu"))
    assert a is b
    key = (id(feats), "cpu")
    assert key in device_mod._DEVICE_COPIES
    del feats, a, b
    gc.collect()
    assert key not in device_mod._DEVICE_COPIES


def test_train_config_comes_from_the_training_settings():
    from quantgod_assets.settings import TrainingSettings

    training = TrainingSettings(epochs=7, lr=0.002, tcn_channels=8)
    cfg = TrainConfig.from_settings(training, patience=0, checkpoint_path="x.pth")
    assert (cfg.epochs, cfg.lr, cfg.patience, cfg.checkpoint_path) == (7, 0.002, 0, "x.pth")
    assert cfg.weight_decay == training.weight_decay and cfg.class_weights == "auto"
    assert (cfg.metric, cfg.goal) == ("f1_macro", "maximize")
    with pytest.raises(ValueError, match="epoch"):  # a misspelt name fails, it is not dropped
        TrainConfig.from_settings(training, epoch=3)


def test_train_config_takes_the_study_metric_and_goal():
    from quantgod_assets.settings import OptimizationSettings, TrainingSettings

    opt = OptimizationSettings(metric="loss")
    cfg = TrainConfig.from_settings(TrainingSettings(), metric=opt.metric, direction=opt.goal)
    assert (cfg.metric, cfg.direction, cfg.goal) == ("loss", "minimize", "minimize")
    assert TrainConfig(metric="balanced_accuracy").goal == "maximize"  # None: the metric's own


def test_unknown_metric_or_contradicting_direction_fails():
    with pytest.raises(ValueError, match="unknown metric 'f2_macro': one of f1_macro, "):
        TrainConfig(metric="f2_macro")
    with pytest.raises(ValueError, match="contradicts metric 'loss'"):
        TrainConfig(metric="loss", direction="maximize")


# ---------------------------------------------------------------------------------------------
# Class weights


def windows_with_labels(counts, seq_len=1):
    """TensorWindows whose window ends carry counts[c] labels of class c (shuffled)."""
    y = np.repeat(np.arange(3), counts)
    np.random.default_rng(0).shuffle(y)
    return TensorWindows(np.eye(3, dtype=np.float32)[y], y, np.arange(seq_len - 1, len(y)), seq_len)


def test_auto_weights_are_the_inverse_train_priors():
    ds = windows_with_labels([20, 160, 20])
    weights = class_weights_for(TrainConfig(class_weights="auto"), ds)
    n = 200
    assert weights == pytest.approx([n / (3 * 20), n / (3 * 160), n / (3 * 20)])


def test_auto_weights_read_only_the_window_end_targets():
    # rows 0..3 are SELL but no window ends there: only the 6 window ends count
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    ds = TensorWindows(np.zeros((10, 3), np.float32), y, np.arange(4, 10), 5)
    assert class_weights_for(TrainConfig(), ds) == pytest.approx([0.0, 6 / (3 * 4), 6 / (3 * 2)])


def test_a_class_absent_from_training_gets_weight_zero():
    weights = class_weights_for(TrainConfig(), windows_with_labels([0, 50, 150]))
    assert weights == pytest.approx([0.0, 200 / 150, 200 / 450])
    generic = torch.utils.data.TensorDataset(torch.zeros(4, 2, 3), torch.tensor([1, 1, 2, 1]))
    assert class_weights_for(TrainConfig(), generic) == pytest.approx([0.0, 4 / 9, 4 / 3])


def test_fixed_weights_are_used_as_given():
    assert class_weights_for(TrainConfig(class_weights=(2, 1, 2)), windows_with_labels([1, 1, 1])) == [2.0, 1.0, 2.0]


# ---------------------------------------------------------------------------------------------
# The chosen metric: a scripted model whose validation scores are set epoch by epoch


class Scripted(torch.nn.Module):
    """logits = one-hot(label) @ W: row c of W is what a window of class c scores. With lr 0 the
    optimizer never moves W; `on_epoch` installs the next epoch's W from `script`."""

    def __init__(self, script):
        super().__init__()
        self.script = script
        self.w = torch.nn.Parameter(script[0].clone())

    def forward(self, x):
        return x[:, -1, :3] @ self.w

    def next_epoch(self, metrics):
        if metrics.epoch < len(self.script):
            with torch.no_grad():
                self.w.copy_(self.script[metrics.epoch])


def mapping(scale, sell=0, neutral=1, buy=2):
    """W predicting class `sell` for SELL windows, ... with confidence `scale`."""
    w = torch.zeros(3, 3)
    for true, predicted in enumerate((sell, neutral, buy)):
        w[true, predicted] = scale
    return w


PERFECT_BUT_TIMID = mapping(0.2)  # F1 1, accuracy 1, loss log(1 + 2e^-0.2) ≈ 0.97
SELL_MISSED_CONFIDENT = mapping(5.0, sell=1)  # F1 ≈ 0.65, accuracy 0.9, loss ≈ 0.51
EVERYTHING_SELL_BUT_BUY = mapping(5.0, neutral=0)  # F1 0.4, accuracy 0.2
ALL_NEUTRAL = mapping(5.0, sell=1, buy=1)  # F1 ≈ 0.30, accuracy 0.8


def run_script(script, patience=0, **cfg):
    ds = windows_with_labels([20, 160, 20])
    model = Scripted(script)
    config = TrainConfig(epochs=len(script), batch_size=64, lr=0.0, min_lr=0.0, patience=patience,
                         class_weights=(1.0, 1.0, 1.0), device="cpu", log_every=0, **cfg)
    handler = ListHandler()
    with lines_to(handler):
        result = train_model(model, ds, ds, config, on_epoch=model.next_epoch)
    return model, result, handler.lines


def test_loss_keeps_the_lowest_validation_loss_epoch_not_the_best_f1():
    model, result, lines = run_script([PERFECT_BUT_TIMID, SELL_MISSED_CONFIDENT], metric="loss")
    losses = [m.val_loss for m in result.history]
    f1s = [m.f1_macro for m in result.history]
    assert int(np.argmax(f1s)) + 1 == 1  # the script works: F1 prefers epoch 1 ...
    assert result.best_epoch == int(np.argmin(losses)) + 1 == 2  # ... the loss epoch 2, and wins
    assert result.best_value == pytest.approx(losses[1]) and result.metric == "loss"
    assert result.best_f1_macro == pytest.approx(f1s[1])  # F1 macro AT the best epoch
    torch.testing.assert_close(model.w.detach(), SELL_MISSED_CONFIDENT)  # its weights are kept
    assert f"✅ Best model saved (val loss: {losses[1]:.4f})" in lines


def test_accuracy_keeps_the_highest_accuracy_epoch():
    _model, result, _lines = run_script([EVERYTHING_SELL_BUT_BUY, ALL_NEUTRAL], metric="accuracy",
                                        direction="maximize")
    accuracies = [m.value("accuracy") for m in result.history]
    assert accuracies == pytest.approx([0.2, 0.8])
    assert int(np.argmax([m.f1_macro for m in result.history])) + 1 == 1
    assert result.best_epoch == int(np.argmax(accuracies)) + 1 == 2


@pytest.mark.parametrize(("metric", "stopped_at"), [("loss", 3), ("f1_macro", 4)])
def test_early_stopping_counts_epochs_without_gain_in_the_chosen_metric(metric, stopped_at):
    # F1 gains at epoch 2, the loss never after epoch 1: patience 2 runs out at 3 or 4
    script = [SELL_MISSED_CONFIDENT, PERFECT_BUT_TIMID, mapping(0.1), mapping(0.1), mapping(0.1)]
    _model, result, lines = run_script(script, patience=2, metric=metric)
    assert result.stopped_early and len(result.history) == stopped_at
    assert any(line.startswith(f"⏹ Early stopping at epoch {stopped_at}: no val {metric} improvement")
               for line in lines)


def test_epoch_metrics_hold_every_selectable_metric_and_log_them():
    _model, result, _lines = run_script([EVERYTHING_SELL_BUT_BUY])
    m = result.history[0]
    assert set(m.values) == {"f1_macro", "f1_weighted", "accuracy", "balanced_accuracy", "loss"}
    assert m.value("loss") == m.val_loss and m.value("balanced_accuracy") == pytest.approx(2 / 3)
    # SELL is predicted for 180 windows, 20 right; BUY always right
    assert m.precision_per_class == pytest.approx([20 / 180, 0.0, 1.0])
    assert m.recall_per_class == pytest.approx([1.0, 0.0, 1.0])
    logged = m.as_mlflow()
    assert logged["val_accuracy"] == pytest.approx(0.2)
    assert logged["val_balanced_accuracy"] == pytest.approx(2 / 3)
    assert logged["val_precision_sell"] == pytest.approx(20 / 180) and logged["val_recall_buy"] == 1.0
    assert {"val_precision_neutral", "val_precision_buy", "val_recall_sell", "val_recall_neutral"} <= set(logged)
    with pytest.raises(KeyError, match="no validation 'f2'"):
        m.value("f2")


def test_epoch_metrics_built_by_hand_still_answer_the_old_metrics():
    m = EpochMetrics(epoch=1, epochs=1, train_loss=1.0, val_loss=0.9, f1_macro=0.4, f1_weighted=0.5,
                     f1_per_class=[0.1, 0.2, 0.3], lr=1e-3, samples_per_s=1.0, seconds=1.0)
    assert (m.value("loss"), m.value("f1_macro"), m.value("f1_weighted")) == (0.9, 0.4, 0.5)
    assert "val_accuracy" not in m.as_mlflow()
