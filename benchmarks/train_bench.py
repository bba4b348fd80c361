"""Training throughput: samples/s of a full step (window gather, forward, backward, AdamW step)
at the production shape — seq_len 720, 200 book levels (807 features), batch 256 — on the
current device, bf16 autocast on CUDA. Prints samples/s and peak memory per architecture.

Batches come from `make_batches` over a synthetic float32 feature matrix, exactly as in
training (on CUDA the matrix sits on the GPU when it fits), so the data path is counted too.

    python benchmarks/train_bench.py                         # both archs, auto device
    python benchmarks/train_bench.py --arch tcn_lstm --steps 50 --warmup 5
    python benchmarks/train_bench.py --seq-len 120 --n-levels 50 --batch-size 512
    python benchmarks/train_bench.py --json results.json
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np
import torch

from quantgod_assets.ml.device import autocast, configure_device, describe_device, make_batches, pick_device
from quantgod_assets.ml.models import build_model, count_parameters


def n_features_for(n_levels: int) -> int:
    try:
        from quantgod_assets.ml.features import n_features
    except ImportError:  # features needs polars; the GPU image may lack it. 4 per level + 7 row features
        return 4 * n_levels + 7
    return n_features(n_levels)


class SyntheticWindows:
    """Duck-typed window dataset (see `device.window_arrays`) over a random matrix."""

    def __init__(self, n_rows: int, n_features: int, seq_len: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.features = rng.standard_normal((n_rows, n_features), dtype=np.float32)
        self.targets = rng.integers(0, 3, n_rows).astype(np.int64)
        self.ends = np.arange(seq_len - 1, n_rows, dtype=np.int64)
        self.seq_len = seq_len
        self.scaler = None

    def __len__(self) -> int:
        return len(self.ends)


def peak_host_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 1024 / 1024


def bench_arch(arch: str, params: dict, data: SyntheticWindows, args, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = build_model(arch, data.features.shape[1], params).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor([2.0, 1.0, 2.0], device=device))
    batches = make_batches(data, args.batch_size, True, device, seed=0)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)

    def step(x, y):
        with autocast(device, not args.no_amp):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    iterator = iter(batches)

    def next_batch():
        nonlocal iterator
        try:
            return next(iterator)
        except StopIteration:
            iterator = iter(batches)
            return next(iterator)

    model.train()
    for _ in range(args.warmup):
        step(*next_batch())
    sync()
    started = time.perf_counter()
    samples = 0
    for _ in range(args.steps):
        x, y = next_batch()
        step(x, y)
        samples += y.shape[0]
    sync()
    seconds = time.perf_counter() - started
    result = {
        "arch": arch,
        "params": params,
        "n_parameters": count_parameters(model),
        "samples_per_s": samples / seconds,
        "step_ms": 1000 * seconds / args.steps,
        "steps": args.steps,
        "placement": batches.placement,
    }
    if device.type == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    result["peak_host_mb"] = peak_host_mb()
    # drop the references before the next architecture is built (the step closure shares these cells, so
    # rebinding frees them the way del would, without leaving step() a name that no longer exists)
    model = optimizer = None
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=["tcn_lstm", "transformer", "both"], default="both")
    p.add_argument("--seq-len", type=int, default=720)
    p.add_argument("--n-levels", type=int, default=200)
    p.add_argument("--n-features", type=int, default=None, help="overrides the count from --n-levels")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=None, help="timed steps (default: 30 on CUDA, 3 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 5 on CUDA, 1 on CPU)")
    p.add_argument("--rows", type=int, default=20_000, help="rows of the synthetic feature matrix")
    p.add_argument("--tcn-channels", type=int, default=64)
    p.add_argument("--lstm-hidden", type=int, default=128)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-amp", action="store_true", help="float32 on CUDA instead of bf16 autocast")
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args(argv)

    device = pick_device(args.device)
    configure_device(device)
    on_gpu = device.type == "cuda"
    args.steps = args.steps or (30 if on_gpu else 3)
    args.warmup = args.warmup if args.warmup is not None else (5 if on_gpu else 1)
    n_features = args.n_features or n_features_for(args.n_levels)
    rows = max(args.rows, args.seq_len + args.batch_size)
    data = SyntheticWindows(rows, n_features, args.seq_len)
    amp = "bf16 autocast" if on_gpu and not args.no_amp else "float32"
    print(
        f"device: {describe_device(device)} | torch {torch.__version__} | {amp} | seq_len {args.seq_len} | "
        f"features {n_features} | batch {args.batch_size} | {args.steps} timed steps after {args.warmup} warm-up"
    )
    archs = ["tcn_lstm", "transformer"] if args.arch == "both" else [args.arch]
    results = []
    for arch in archs:
        params = {"seq_len": args.seq_len, "dropout": 0.1}
        if arch == "tcn_lstm":
            params |= {"tcn_channels": args.tcn_channels, "lstm_hidden": args.lstm_hidden}
        else:
            params |= {"d_model": args.d_model, "n_heads": args.n_heads, "n_layers": args.n_layers}
        try:
            r = bench_arch(arch, params, data, args, device)
        except torch.OutOfMemoryError:
            print(f"{arch:12s} | CUDA out of memory at batch {args.batch_size}")
            torch.cuda.empty_cache()
            continue
        if "peak_gpu_mb" in r:
            memory = f"peak GPU {r['peak_gpu_mb']:,.0f} MB"
        else:
            memory = f"peak RSS {r['peak_host_mb']:,.0f} MB"
        print(
            f"{arch:12s} | {r['n_parameters']:>10,} params | {r['samples_per_s']:>10,.1f} samples/s | "
            f"{r['step_ms']:8.1f} ms/step | {memory} | data: {r['placement']}"
        )
        results.append(r)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": describe_device(device), "torch": torch.__version__, "amp": amp,
                       "seq_len": args.seq_len, "n_features": n_features, "batch_size": args.batch_size,
                       "results": results}, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
