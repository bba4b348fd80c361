"""Where training runs and how batches get there.

On CUDA: bf16 autocast, cuDNN benchmark mode, TF32 matmuls, and the feature matrix kept on the GPU
when it fits (windows are then gathered on the GPU, no host→device copy per batch); otherwise
batches are gathered on the host into pinned memory and copied asynchronously.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "BatchSource",
    "autocast",
    "configure_device",
    "describe_device",
    "make_batches",
    "pick_device",
    "window_arrays",
]


def pick_device(preferred: str | torch.device | None = "auto") -> torch.device:
    """"auto" (or None): cuda, else mps, else cpu. An explicit name is taken as given."""
    if isinstance(preferred, torch.device):
        return preferred
    if preferred not in (None, "", "auto"):
        return torch.device(preferred)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def configure_device(device: torch.device) -> None:
    """Global speed settings for `device` (idempotent)."""
    if device.type == "cuda":
        # the input shapes are fixed during a run, so cuDNN's autotuner pays off after one batch
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA (no loss scaling needed, unlike fp16); a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda ({torch.cuda.get_device_name(index)})"
    return device.type


# ---------------------------------------------------------------------------------------------
# Batches


def window_arrays(dataset: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, Any] | None:
    """(features [N, F], targets [N], ends [M], seq_len, scaler) when `dataset` is a window
    dataset over one feature matrix (`SequenceDataset` or anything with the same attributes),
    else None."""
    names = ("features", "targets", "ends", "seq_len")
    if not all(hasattr(dataset, n) for n in names):
        return None
    return (
        dataset.features,
        dataset.targets,
        np.asarray(dataset.ends, dtype=np.int64),
        int(dataset.seq_len),
        getattr(dataset, "scaler", None),
    )


@dataclass
class BatchSource:
    """Re-iterable batches of (x float32 [B, seq_len, F], y int64 [B]) already on `device`.

    `placement` says where the data lives: "device" (whole matrix on the accelerator),
    "pinned" (host, pinned batches, async copies), "host" (CPU training), "loader" (a generic
    Dataset through a DataLoader).
    """

    n_samples: int
    batch_size: int
    shuffle: bool
    device: torch.device
    placement: str
    _iter_fn: Any
    seed: int = 0

    def __len__(self) -> int:
        return (self.n_samples + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.seed += 1
        return self._iter_fn(self.seed)


# One device copy per host matrix: train, val and test windows index the same matrix, which
# should sit on the GPU once, not three times. Entries go when the host array is collected.
_DEVICE_COPIES: dict[tuple[int, str], torch.Tensor] = {}


def _device_copy(features: np.ndarray, device: torch.device) -> torch.Tensor:
    key = (id(features), str(device))
    cached = _DEVICE_COPIES.get(key)
    if cached is not None and tuple(cached.shape) == tuple(features.shape):
        return cached
    array = np.asarray(features)
    host = torch.from_numpy(array) if array.dtype == np.float32 else torch.as_tensor(array, dtype=torch.float32)
    # a copy that does not keep the host array alive (else the cache entry could never go)
    tensor = host.to(device) if device.type != "cpu" else host.clone()
    try:
        weakref.finalize(features, _DEVICE_COPIES.pop, key, None)
    except TypeError:  # not weak-referenceable: no caching
        return tensor
    _DEVICE_COPIES[key] = tensor
    return tensor


def _gpu_fits(features: np.ndarray, nbytes: int, device: torch.device, fraction: float) -> bool:
    if device.type != "cuda":
        return False
    if (id(features), str(device)) in _DEVICE_COPIES:
        return True
    free, _total = torch.cuda.mem_get_info(device)
    return nbytes <= fraction * free


def make_batches(
    dataset: Any,
    batch_size: int,
    shuffle: bool,
    device: torch.device,
    seed: int = 0,
    gpu_fraction: float = 0.5,
    num_workers: int = 0,
    data_on_device: bool | None = None,
) -> BatchSource:
    """Batches of `dataset` on `device`.

    A window dataset (see `window_arrays`) is gathered by vectorised indexing — one
    `features[ends[:, None] + offsets]` per batch instead of batch_size Python `__getitem__`
    calls. Its matrix moves to the GPU when it takes under `gpu_fraction` of the free memory
    (`data_on_device` forces the choice). Anything else goes through a DataLoader.
    """
    n = len(dataset)
    arrays = window_arrays(dataset)
    if arrays is None:
        return _loader_batches(dataset, batch_size, shuffle, device, seed, num_workers)

    features, targets, ends, seq_len, scaler = arrays
    offsets = torch.arange(-seq_len + 1, 1, dtype=torch.int64)
    # (mean, std) stacked [blocks, F] and each window's block: a scaler per instrument block
    # (`BlockScaler`: a window lies in one block) or one for all (block 0)
    scaling: tuple[torch.Tensor, torch.Tensor] | None = None
    window_block = torch.zeros(len(ends), dtype=torch.int64)
    if scaler is not None:
        parts = getattr(scaler, "scalers", None) or [scaler]
        scaling = (
            torch.as_tensor(np.stack([np.asarray(s.mean) for s in parts]), dtype=torch.float32),
            torch.as_tensor(np.stack([np.asarray(s.std) for s in parts]), dtype=torch.float32),
        )
        if len(parts) > 1:
            window_block = torch.as_tensor(scaler.block_of(np.asarray(ends)), dtype=torch.int64)
    # y for every window, indexed by window number (small: int64 per window)
    y_all = torch.as_tensor(np.asarray(targets)[ends].astype(np.int64))
    ends_t = torch.as_tensor(ends)

    nbytes = int(np.asarray(features).nbytes) if hasattr(features, "nbytes") else 0
    on_device = data_on_device if data_on_device is not None else _gpu_fits(features, nbytes, device, gpu_fraction)
    if device.type == "cpu":
        placement = "host"
    elif on_device:
        placement = "device"
    else:
        placement = "pinned"

    if placement == "device":
        store = _device_copy(features, device)
        ends_t, y_all, offsets = ends_t.to(device), y_all.to(device), offsets.to(device)
        window_block = window_block.to(device)
    else:
        # torch.from_numpy shares the (possibly huge) matrix: no copy
        feats = np.asarray(features)
        store = torch.from_numpy(feats) if feats.dtype == np.float32 else torch.as_tensor(feats, dtype=torch.float32)

    pin = placement == "pinned"
    if scaling is not None and placement != "host":
        scaling = (scaling[0].to(device), scaling[1].to(device))

    def iterate(epoch_seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if shuffle:
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch_seed)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        if placement == "device":
            order = order.to(device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            rows = ends_t[idx].unsqueeze(1) + offsets  # [B, seq_len]
            x = store[rows]
            y = y_all[idx]
            if pin:
                x = x.pin_memory().to(device, non_blocking=True)
                y = y.pin_memory().to(device, non_blocking=True)
            if scaling is not None:
                block = window_block[idx].to(scaling[0].device)  # [B]: each window's instrument
                x = (x - scaling[0][block].unsqueeze(1)) / scaling[1][block].unsqueeze(1)
            yield x, y

    return BatchSource(n, batch_size, shuffle, device, placement, iterate, seed)


def _loader_batches(dataset, batch_size, shuffle, device, seed, num_workers) -> BatchSource:
    from torch.utils.data import DataLoader

    pin = device.type == "cuda"

    def iterate(epoch_seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch_seed)
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            generator=g,
            num_workers=num_workers,
            pin_memory=pin,
            persistent_workers=False,
        )
        for x, y in loader:
            yield x.to(device, non_blocking=pin).float(), y.to(device, non_blocking=pin).long()

    return BatchSource(len(dataset), batch_size, shuffle, device, "loader", iterate, seed)
