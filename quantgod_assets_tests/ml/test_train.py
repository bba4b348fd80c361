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
    TrainConfig,
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
    assert "✅ Best model saved (F1 Macro: " in text
    assert "F1 [S/N/B]: [" in text and "samples/s" in text and "Batch 10/" in text
    assert [m.epoch for m in epochs_seen] == [m.epoch for m in result.history]
    assert (tmp_path / "ckpt.pth").exists()
    assert result.best_f1_macro == max(m.f1_macro for m in result.history)

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
    assert cfg.weight_decay == training.weight_decay and cfg.class_weights == (2.0, 1.0, 2.0)
    with pytest.raises(ValueError, match="epoch"):  # a misspelt name fails, it is not dropped
        TrainConfig.from_settings(training, epoch=3)
