"""Shapes, causality and receptive field of the two architectures; specs rebuild models."""

from __future__ import annotations

import pytest
import torch

from quantgod_assets.ml.models import (
    HybridTCNLSTM,
    TransformerClassifier,
    build_from_spec,
    build_model,
    count_parameters,
    model_spec,
    plain_copy,
    tcn_blocks_needed,
    tcn_receptive_field,
)


@pytest.mark.parametrize("seq_len", [1, 2, 5, 16, 32, 100, 720])
@pytest.mark.parametrize("kernel_size", [2, 3, 5])
def test_receptive_field_covers_seq_len_with_fewest_blocks(seq_len, kernel_size):
    n = tcn_blocks_needed(seq_len, kernel_size)
    assert tcn_receptive_field(kernel_size, n) >= seq_len
    if n > 1:
        assert tcn_receptive_field(kernel_size, n - 1) < seq_len


def test_receptive_field_of_the_model_is_what_its_blocks_give():
    model = HybridTCNLSTM(n_features=3, tcn_channels=4, lstm_hidden=4, dropout=0.0, seq_len=720)
    assert len(model.tcn.blocks) == 8  # dilations 1..128, receptive field 1021
    assert model.receptive_field == 1021
    dilations = [block.conv1.dilation[0] for block in model.tcn.blocks]
    assert dilations == [1, 2, 4, 8, 16, 32, 64, 128]


def test_receptive_field_measured_by_gradient():
    """The first input step still moves the last TCN output: the window is covered."""
    torch.manual_seed(0)
    seq_len = 24
    model = HybridTCNLSTM(n_features=2, tcn_channels=4, lstm_hidden=4, dropout=0.0, seq_len=seq_len).eval()
    x = torch.randn(1, seq_len, 2, requires_grad=True)
    out = model.tcn(x.transpose(1, 2))[0, :, -1].sum()
    out.backward()
    assert (x.grad[0].abs().sum(dim=1) > 0).all()


def test_tcn_lstm_output_shape_and_weight_norm():
    model = HybridTCNLSTM(n_features=5, tcn_channels=8, lstm_hidden=12, dropout=0.1, seq_len=32)
    assert model(torch.randn(7, 32, 5)).shape == (7, 3)
    from torch.nn.utils import parametrize

    assert parametrize.is_parametrized(model.tcn.blocks[0].conv1, "weight")
    assert model.tcn.blocks[0].shortcut is not None  # 5 -> 8 channels
    assert model.tcn.blocks[1].shortcut is None


def test_tcn_and_lstm_are_causal():
    """Changing inputs after step t leaves every output up to t unchanged."""
    torch.manual_seed(1)
    seq_len, t = 32, 17
    model = HybridTCNLSTM(n_features=3, tcn_channels=6, lstm_hidden=5, dropout=0.0, seq_len=seq_len).eval()
    x = torch.randn(2, seq_len, 3)
    y = x.clone()
    y[:, t + 1 :] = torch.randn(2, seq_len - t - 1, 3) * 10
    with torch.no_grad():
        tcn_x = model.tcn(x.transpose(1, 2))
        tcn_y = model.tcn(y.transpose(1, 2))
        seq_x, seq_y = model.sequence_features(x), model.sequence_features(y)
    torch.testing.assert_close(tcn_x[:, :, : t + 1], tcn_y[:, :, : t + 1])
    torch.testing.assert_close(seq_x[:, : t + 1], seq_y[:, : t + 1])
    assert not torch.allclose(tcn_x[:, :, t + 1 :], tcn_y[:, :, t + 1 :])


def test_transformer_output_shape_and_head_check():
    model = TransformerClassifier(n_features=5, d_model=16, n_heads=4, n_layers=2, dropout=0.1, seq_len=20)
    assert model(torch.randn(3, 20, 5)).shape == (3, 3)
    with pytest.raises(ValueError, match="multiple of n_heads"):
        TransformerClassifier(n_features=5, d_model=10, n_heads=4, n_layers=1, dropout=0.0, seq_len=20)


@pytest.mark.parametrize("arch", ["tcn_lstm", "transformer"])
def test_spec_rebuilds_the_same_model(arch):
    params = {"tcn_channels": 8, "lstm_hidden": 8, "d_model": 16, "n_heads": 2, "n_layers": 1,
              "dropout": 0.0, "seq_len": 16, "lr": 0.01, "batch_size": 64}
    model = build_model(arch, 4, params).eval()
    spec = model.spec
    assert spec["arch"] == arch and spec["n_features"] == 4
    assert "lr" not in spec["params"] and "batch_size" not in spec["params"]
    assert spec == model_spec(arch, 4, params)
    rebuilt = build_from_spec(spec).eval()
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, 16, 4)
    with torch.no_grad():
        torch.testing.assert_close(model(x), rebuilt(x))
        torch.testing.assert_close(model(x), plain_copy(model)(x))
    assert count_parameters(model) == count_parameters(rebuilt) > 0


def test_plain_copy_leaves_the_original_parametrized_and_is_picklable():
    import pickle

    model = build_model("tcn_lstm", 3, {"tcn_channels": 4, "lstm_hidden": 4, "seq_len": 8}).eval()
    copy_ = plain_copy(model)
    pickle.dumps(copy_)
    from torch.nn.utils import parametrize

    assert parametrize.is_parametrized(model.tcn.blocks[0].conv1)
    assert not parametrize.is_parametrized(copy_.tcn.blocks[0].conv1)
    model(torch.randn(1, 8, 3))  # the original still runs


def test_unknown_arch_is_refused():
    with pytest.raises(ValueError, match="unknown arch"):
        build_model("gru", 3, {})
