"""The two sequence classifiers: a hybrid TCN→LSTM and a Transformer encoder.

Both take x float32 [batch, seq_len, n_features] and return logits [batch, n_classes]
(0 SELL, 1 NEUTRAL, 2 BUY). A model is described by a *spec* — `{"arch", "n_features",
"params"}`, plain JSON — so a saved file can rebuild it without the training config.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

__all__ = [
    "ARCHITECTURES",
    "HybridTCNLSTM",
    "TransformerClassifier",
    "build_from_spec",
    "build_model",
    "count_parameters",
    "model_spec",
    "plain_copy",
    "tcn_blocks_needed",
    "tcn_receptive_field",
]

N_CLASSES = 3


# ---------------------------------------------------------------------------------------------
# TCN


def tcn_receptive_field(kernel_size: int, n_blocks: int) -> int:
    """Rows seen by the last output of `n_blocks` residual blocks (two convs each, dilation 2**i)."""
    # each conv of dilation d adds (k-1)*d rows; two convs per block; sum of 2**i is 2**n - 1
    return 1 + 2 * (kernel_size - 1) * (2**n_blocks - 1)


def tcn_blocks_needed(seq_len: int, kernel_size: int = 3) -> int:
    """The fewest blocks whose receptive field covers `seq_len` rows (at least one block)."""
    if kernel_size < 2:
        raise ValueError(f"kernel_size must be >= 2 for the receptive field to grow, got {kernel_size}")
    n = 1
    while tcn_receptive_field(kernel_size, n) < seq_len:
        n += 1
    return n


class Chomp1d(nn.Module):
    """Drops the last `size` time steps: with padding (k-1)*d on both sides, what remains of a
    Conv1d's output at t depends on inputs ≤ t only (a causal convolution)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, : -self.size].contiguous() if self.size else x


class TemporalBlock(nn.Module):
    """Two weight-normed dilated causal convolutions with ReLU and dropout, plus a residual
    (a 1×1 convolution when the channel count changes)."""

    def __init__(self, n_in: int, n_out: int, kernel_size: int, dilation: int, dropout: float):
        super().__init__()
        padding = (kernel_size - 1) * dilation
        self.conv1 = weight_norm(nn.Conv1d(n_in, n_out, kernel_size, padding=padding, dilation=dilation))
        self.chomp1 = Chomp1d(padding)
        self.relu1 = nn.ReLU()
        self.drop1 = nn.Dropout(dropout)
        self.conv2 = weight_norm(nn.Conv1d(n_out, n_out, kernel_size, padding=padding, dilation=dilation))
        self.chomp2 = Chomp1d(padding)
        self.relu2 = nn.ReLU()
        self.drop2 = nn.Dropout(dropout)
        self.shortcut = nn.Conv1d(n_in, n_out, 1) if n_in != n_out else None
        self.relu = nn.ReLU()
        self._init_weights()

    def _init_weights(self) -> None:
        for conv in (self.conv1, self.conv2):
            # the original weight lives in parametrizations.weight.original{0,1}; re-deriving g
            # and v from a small normal init is what the TCN paper does
            with torch.no_grad():
                v = torch.empty_like(conv.weight).normal_(0.0, 0.01)
                conv.weight = v
        if self.shortcut is not None:
            nn.init.normal_(self.shortcut.weight, 0.0, 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.drop1(self.relu1(self.chomp1(self.conv1(x))))
        out = self.drop2(self.relu2(self.chomp2(self.conv2(out))))
        residual = x if self.shortcut is None else self.shortcut(x)
        return self.relu(out + residual)


class TemporalConvNet(nn.Module):
    """Residual blocks with dilations 1, 2, 4, … ; input and output [batch, channels, time]."""

    def __init__(self, n_in: int, channels: list[int], kernel_size: int, dropout: float):
        super().__init__()
        blocks = []
        for i, n_out in enumerate(channels):
            blocks.append(TemporalBlock(n_in if i == 0 else channels[i - 1], n_out, kernel_size, 2**i, dropout))
        self.blocks = nn.Sequential(*blocks)
        self.kernel_size = kernel_size

    @property
    def receptive_field(self) -> int:
        return tcn_receptive_field(self.kernel_size, len(self.blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class HybridTCNLSTM(nn.Module):
    """TCN (receptive field ≥ seq_len) → LSTM → the last step's hidden state → linear head.

    Every step of `sequence_features` depends on inputs up to that step only; the head reads
    the last step, so the whole window is seen.
    """

    def __init__(
        self,
        n_features: int,
        tcn_channels: int = 64,
        lstm_hidden: int = 128,
        dropout: float = 0.2,
        seq_len: int = 720,
        kernel_size: int = 3,
        n_classes: int = N_CLASSES,
        lstm_layers: int = 1,
    ):
        super().__init__()
        self.seq_len = int(seq_len)
        n_blocks = tcn_blocks_needed(self.seq_len, kernel_size)
        self.tcn = TemporalConvNet(int(n_features), [int(tcn_channels)] * n_blocks, kernel_size, dropout)
        self.lstm = nn.LSTM(
            int(tcn_channels),
            int(lstm_hidden),
            num_layers=int(lstm_layers),
            batch_first=True,
            dropout=dropout if lstm_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(int(lstm_hidden), n_classes)

    @property
    def receptive_field(self) -> int:
        return self.tcn.receptive_field

    def sequence_features(self, x: torch.Tensor) -> torch.Tensor:
        """[batch, time, lstm_hidden]: the causal representation of every step."""
        h = self.tcn(x.transpose(1, 2)).transpose(1, 2)
        out, _ = self.lstm(h)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.sequence_features(x)[:, -1]))


# ---------------------------------------------------------------------------------------------
# Transformer


def sinusoidal_positions(seq_len: int, d_model: int) -> torch.Tensor:
    """[seq_len, d_model] fixed sine/cosine position codes (Vaswani et al.)."""
    position = torch.arange(seq_len, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10_000.0) / d_model))
    codes = torch.zeros(seq_len, d_model)
    codes[:, 0::2] = torch.sin(position * div)
    codes[:, 1::2] = torch.cos(position * div[: d_model // 2])
    return codes


class TransformerClassifier(nn.Module):
    """Linear projection + sinusoidal positions → pre-norm Transformer encoder → [last step,
    mean over steps] → linear head."""

    positions: torch.Tensor  # a registered buffer: declared so it reads as a tensor, not Module.__getattr__'s union

    def __init__(
        self,
        n_features: int,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        dropout: float = 0.1,
        seq_len: int = 720,
        n_classes: int = N_CLASSES,
        ff_mult: int = 4,
    ):
        super().__init__()
        d_model, n_heads = int(d_model), int(n_heads)
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be a multiple of n_heads ({n_heads})")
        self.seq_len = int(seq_len)
        self.input = nn.Linear(int(n_features), d_model)
        # not persistent: rebuilt from (seq_len, d_model), so the state_dict holds weights only
        self.register_buffer("positions", sinusoidal_positions(self.seq_len, d_model), persistent=False)
        layer = nn.TransformerEncoderLayer(
            d_model,
            n_heads,
            dim_feedforward=ff_mult * d_model,
            dropout=dropout,
            batch_first=True,
            norm_first=True,
            activation="gelu",
        )
        self.encoder = nn.TransformerEncoder(layer, int(n_layers), enable_nested_tensor=False)
        self.norm = nn.LayerNorm(2 * d_model)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * d_model, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        if t > self.positions.shape[0]:
            raise ValueError(f"sequence of {t} steps is longer than the model's seq_len {self.seq_len}")
        h = self.input(x) + self.positions[-t:].to(dtype=x.dtype)
        h = self.encoder(h)
        pooled = torch.cat([h[:, -1], h.mean(dim=1)], dim=-1)
        return self.head(self.dropout(self.norm(pooled)))


# ---------------------------------------------------------------------------------------------
# Building from parameters / specs

ARCHITECTURES: dict[str, dict[str, Any]] = {
    # arch name -> the constructor's parameters (besides n_features) and their defaults
    "tcn_lstm": {
        "tcn_channels": 64,
        "lstm_hidden": 128,
        "dropout": 0.2,
        "seq_len": 720,
        "kernel_size": 3,
        "lstm_layers": 1,
    },
    "transformer": {
        "d_model": 64,
        "n_heads": 4,
        "n_layers": 2,
        "dropout": 0.1,
        "seq_len": 720,
        "ff_mult": 4,
    },
}
_ALIASES = {
    "hybrid_tcn_lstm": "tcn_lstm", "tcn-lstm": "tcn_lstm", "tcn": "tcn_lstm", "transformer_encoder": "transformer",
}
_CLASSES = {"tcn_lstm": HybridTCNLSTM, "transformer": TransformerClassifier}


def _canonical_arch(arch: str) -> str:
    name = _ALIASES.get(str(arch).lower(), str(arch).lower())
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; known: {sorted(ARCHITECTURES)}")
    return name


def model_spec(arch: str, n_features: int, params: Mapping[str, Any]) -> dict[str, Any]:
    """`{"arch", "n_features", "n_classes", "params"}` with only the constructor's parameters
    (defaults filled in), JSON-ready. `params` may hold other keys (lr, batch_size…): ignored."""
    arch = _canonical_arch(arch)
    chosen = {}
    for key, default in ARCHITECTURES[arch].items():
        value = params.get(key, default)
        chosen[key] = type(default)(value) if isinstance(default, (int, float)) else value
    return {"arch": arch, "n_features": int(n_features), "n_classes": N_CLASSES, "params": chosen}


def build_from_spec(spec: Mapping[str, Any]) -> nn.Module:
    """The (untrained) model a spec describes."""
    arch = _canonical_arch(spec["arch"])
    return _CLASSES[arch](int(spec["n_features"]), n_classes=int(spec.get("n_classes", N_CLASSES)), **spec["params"])


def build_model(arch: str, n_features: int, params: Mapping[str, Any]) -> nn.Module:
    """A model of `arch` ("tcn_lstm" or "transformer") from a flat params dict (e.g. Optuna's
    best params); the spec is attached as `model.spec` for saving."""
    spec = model_spec(arch, n_features, params)
    model = build_from_spec(spec)
    model.spec = spec  # type: ignore[assignment]  # Module.__setattr__ is typed for tensors and modules; spec is plain data
    return model


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def plain_copy(model: nn.Module) -> nn.Module:
    """A copy of a spec-built model with the weight-norm parametrizations folded into plain
    weights: same outputs, but picklable (parametrized modules refuse pickling, which
    `mlflow.pytorch.log_model` needs). The copy is rebuilt from the spec, not deep-copied:
    removing a parametrization edits the module's class, which a deep copy would share."""
    from torch.nn.utils import parametrize

    spec = getattr(model, "spec", None)
    if spec is None:
        raise ValueError("plain_copy needs a model built by build_model / build_from_spec")
    device = next(model.parameters()).device
    copy_ = build_from_spec(spec)
    copy_.load_state_dict(model.state_dict())
    for module in list(copy_.modules()):
        if parametrize.is_parametrized(module):
            parametrizations = module.parametrizations
            if not isinstance(parametrizations, nn.ModuleDict):  # what torch's parametrize always installs
                raise TypeError(f"unexpected parametrizations container {type(parametrizations).__name__}")
            for name in list(parametrizations.keys()):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
            # weight_norm also left a (local, unpicklable) hook that maps old-style g/v keys
            hooks = module._load_state_dict_pre_hooks
            stale = [k for k, h in hooks.items() if "weight_norm" in getattr(getattr(h, "hook", h), "__qualname__", "")]
            for key in stale:
                del hooks[key]
    copy_.spec = dict(spec)  # type: ignore[assignment]  # Module.__setattr__ is typed for tensors and modules; spec is plain data
    return copy_.to(device).eval()
