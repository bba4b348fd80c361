"""Training loop, evaluation and the one-file model bundle.

`train_model` is the loop the `model` asset and every Optuna trial share: class-weighted
cross-entropy (fixed weights, or "auto": the inverse training priors), AdamW + CosineAnnealingLR
(stepped per epoch), early stopping on the chosen validation metric (`TrainConfig.metric`, in its
direction), the best weights kept (and checkpointed) whenever it improves, and the log lines the
team reads (on this module's logger). `save_model` / `load_model` write and read ONE .pth holding everything needed to
predict: weights, architecture spec, feature names, scaling statistics, label settings.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from pydantic import model_validator
from torch import nn

from ..settings import METRIC_DIRECTIONS, LoopSettings
from ..storage import atomic_write
from .device import autocast, configure_device, make_batches, pick_device, window_arrays
from .metrics import (
    CONFUSION_METRICS,
    class_priors,
    confusion_matrix,
    metric_from_confusion,
    per_class_f1,
    per_class_precision_recall,
)
from .models import build_from_spec, count_parameters

if TYPE_CHECKING:
    from ..settings import TrainingSettings

__all__ = [
    "BUNDLE_FORMAT",
    "EpochMetrics",
    "TrainConfig",
    "TrainResult",
    "class_weights_for",
    "classification_summary",
    "evaluate",
    "load_model",
    "predict_logits",
    "save_model",
    "train_model",
]

BUNDLE_FORMAT = "quantgod-model/1"
SHORT_NAMES = ("S", "N", "B")
LONG_NAMES = ("sell", "neutral", "buy")

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Config and results


class TrainConfig(LoopSettings):
    """The loop's settings: training.yaml's (`LoopSettings`, defaults there) plus the knobs only
    code sets."""

    eval_batch_size: int | None = None  # default: 2 × batch_size
    checkpoint_path: str | None = None  # state_dict written on each improvement
    num_workers: int = 0  # DataLoader workers, for datasets that are not window datasets
    # the validation metric that picks the best epoch, the kept weights and the checkpoint and
    # drives early stopping (one of settings.METRIC_DIRECTIONS), and its direction (None: its own)
    metric: str = "f1_macro"
    direction: Literal["maximize", "minimize"] | None = None

    @model_validator(mode="after")
    def _known_metric(self) -> TrainConfig:
        if self.metric not in METRIC_DIRECTIONS:
            raise ValueError(f"unknown metric {self.metric!r}: one of {', '.join(METRIC_DIRECTIONS)}")
        # a contradicting direction would keep the worst epoch; settings refuses it the same way
        if self.direction is not None and self.direction != METRIC_DIRECTIONS[self.metric]:
            raise ValueError(f"direction {self.direction!r} contradicts metric {self.metric!r}, "
                             f"which is to {METRIC_DIRECTIONS[self.metric]}")
        return self

    @property
    def goal(self) -> str:
        """"maximize" or "minimize": `direction`, else the metric's own."""
        return self.direction or METRIC_DIRECTIONS[self.metric]

    @classmethod
    def from_settings(cls, training: TrainingSettings, **changes: Any) -> TrainConfig:
        """training.yaml's loop settings with `changes` over them (validated: an unknown name fails)."""
        return cls.model_validate({**training.model_dump(include=set(LoopSettings.model_fields)), **changes})


@dataclass
class EpochMetrics:
    epoch: int
    epochs: int
    train_loss: float
    val_loss: float
    f1_macro: float
    f1_weighted: float
    f1_per_class: list[float]
    lr: float
    samples_per_s: float
    seconds: float
    # every selectable validation metric (settings.METRIC_DIRECTIONS) of the epoch; the fields
    # above fill the ones a caller leaves out
    values: dict[str, float] = field(default_factory=dict)
    precision_per_class: list[float] = field(default_factory=list)  # validation, S / N / B
    recall_per_class: list[float] = field(default_factory=list)  # validation, S / N / B

    def __post_init__(self) -> None:
        self.values = {"f1_macro": self.f1_macro, "f1_weighted": self.f1_weighted, "loss": self.val_loss,
                       **self.values}

    def value(self, name: str) -> float:
        """The validation metric `name` (one of settings.METRIC_DIRECTIONS) of this epoch."""
        if name not in self.values:
            raise KeyError(f"no validation {name!r} in epoch {self.epoch}: {', '.join(self.values)}")
        return float(self.values[name])

    def as_mlflow(self) -> dict[str, float]:
        out = {
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
            "val_f1_macro": self.f1_macro,
            "val_f1_weighted": self.f1_weighted,
            "lr": self.lr,
            "samples_per_s": self.samples_per_s,
        }
        for name in ("accuracy", "balanced_accuracy"):
            if name in self.values:
                out[f"val_{name}"] = self.values[name]
        for prefix, triplet in (("f1", self.f1_per_class), ("precision", self.precision_per_class),
                                ("recall", self.recall_per_class)):
            for name, value in zip(LONG_NAMES, triplet):
                out[f"val_{prefix}_{name}"] = value
        return {k: float(v) for k, v in out.items() if math.isfinite(float(v))}


@dataclass
class TrainResult:
    # the validation F1 macro AT the best epoch (the best by `metric`, not the highest F1 macro
    # unless `metric` is f1_macro)
    best_f1_macro: float
    best_epoch: int
    history: list[EpochMetrics]
    stopped_early: bool
    device: str
    n_parameters: int
    best_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    metric: str = "f1_macro"  # the validation metric that chose the best epoch
    best_value: float = float("nan")  # that metric at the best epoch
    class_weights: list[float] = field(default_factory=list)  # the loss's S / N / B weights

    def summary(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "best_value": self.best_value,
            "best_f1_macro": self.best_f1_macro,
            "best_epoch": self.best_epoch,
            "class_weights": list(self.class_weights),
            "epochs_run": len(self.history),
            "stopped_early": self.stopped_early,
            "device": self.device,
            "n_parameters": self.n_parameters,
        }


# ---------------------------------------------------------------------------------------------
# Scores


def classification_summary(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """f1_macro, f1_weighted, accuracy, balanced_accuracy, {f1,precision,recall}_{sell,neutral,buy},
    confusion (rows true, cols pred), n."""
    cm = confusion_matrix(np.asarray(y_true), np.asarray(y_pred), 3)
    out: dict[str, Any] = {name: metric_from_confusion(name, cm) for name in CONFUSION_METRICS}
    out.update(confusion=cm.tolist(), n=int(cm.sum()))
    precision, recall = per_class_precision_recall(cm)
    for prefix, values in (("f1", per_class_f1(cm)), ("precision", precision), ("recall", recall)):
        for name, value in zip(LONG_NAMES, values):
            out[f"{prefix}_{name}"] = float(value)
    return out


def _triplet(summary: Mapping[str, Any], prefix: str) -> list[float]:
    return [float(summary[f"{prefix}_{name}"]) for name in LONG_NAMES]


# ---------------------------------------------------------------------------------------------
# Evaluation and prediction


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Any,
    device: torch.device | str | None = None,
    batch_size: int = 512,
    loss_fn: nn.Module | None = None,
    amp: bool = True,
    batches: Any = None,
) -> dict[str, Any]:
    """Mean loss (when `loss_fn`), logits, y_true, y_pred and `classification_summary` scores."""
    device = pick_device(device) if not isinstance(device, torch.device) else device
    was_training = model.training
    model.eval()
    source = batches if batches is not None else make_batches(dataset, batch_size, False, device)
    total_loss, count = 0.0, 0
    logits_parts, y_parts = [], []
    for x, y in source:
        with autocast(device, amp):
            logits = model(x)
        logits = logits.float()
        if loss_fn is not None:
            total_loss += float(loss_fn(logits, y)) * y.shape[0]
        count += y.shape[0]
        logits_parts.append(logits.cpu())
        y_parts.append(y.cpu())
    model.train(was_training)
    logits = torch.cat(logits_parts).numpy() if logits_parts else np.zeros((0, 3), np.float32)
    y_true = torch.cat(y_parts).numpy() if y_parts else np.zeros(0, np.int64)
    y_pred = logits.argmax(axis=1) if len(logits) else np.zeros(0, np.int64)
    out = classification_summary(y_true, y_pred)
    out.update(loss=total_loss / count if count and loss_fn is not None else float("nan"),
               logits=logits, y_true=y_true, y_pred=y_pred)
    return out


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    data: Any,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    amp: bool = False,
) -> np.ndarray:
    """float32 logits [N, 3] for a Dataset of (x, y), or an array / tensor x [N, seq_len, F].

    Runs where the model's parameters are unless `device` is given; `amp=False` by default so
    the logits are reproducible float32.
    """
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    device = pick_device(device)
    model = model.to(device)
    was_training = model.training
    model.eval()
    parts = []
    if isinstance(data, (np.ndarray, torch.Tensor)):
        x_all = torch.as_tensor(data, dtype=torch.float32)
        for start in range(0, x_all.shape[0], batch_size):
            with autocast(device, amp):
                parts.append(model(x_all[start : start + batch_size].to(device)).float().cpu())
    else:
        for x, _y in make_batches(data, batch_size, False, device):
            with autocast(device, amp):
                parts.append(model(x).float().cpu())
    model.train(was_training)
    return torch.cat(parts).numpy() if parts else np.zeros((0, 3), np.float32)


# ---------------------------------------------------------------------------------------------
# Training


def _state_on_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _train_targets(train_ds: Any) -> np.ndarray:
    """The class of every training window: the targets at the window ends of a window dataset
    (no window is built), else each item's y (reads every item: fine for the small generic
    datasets tests use; the pipeline's datasets are window datasets)."""
    arrays = window_arrays(train_ds)
    if arrays is not None:
        targets, ends = arrays[1], arrays[2]
        return np.asarray(targets)[ends].astype(np.int64)
    return np.fromiter((int(train_ds[i][1]) for i in range(len(train_ds))), dtype=np.int64, count=len(train_ds))


def class_weights_for(cfg: TrainConfig, train_ds: Any) -> list[float]:
    """The loss's S / N / B weights: `cfg.class_weights` when fixed; for "auto" the inverse
    training priors n / (3 n_c), so each class weighs as much in the loss as if classes were
    balanced. A class absent from training gets 0: no training window carries its loss term, so
    its weight changes nothing there (and n / 0 is no number)."""
    if cfg.class_weights != "auto":
        return [float(w) for w in cfg.class_weights]
    priors = class_priors(_train_targets(train_ds), 3)
    return [float(1.0 / (3.0 * p)) if p > 0 else 0.0 for p in priors]


def _weights_line(cfg: TrainConfig, weights: Sequence[float]) -> str:
    how = "auto, inverse train priors" if cfg.class_weights == "auto" else "fixed"
    return f"Class weights ({how}): " + " / ".join(f"{n} {w:.2f}" for n, w in zip(SHORT_NAMES, weights))


def _improves(value: float, best: float, goal: str) -> bool:
    """Whether `value` beats `best` in `goal`'s direction. A NaN (a diverged loss) never beats
    anything but is beaten by any number, so a NaN first epoch is not kept for good."""
    if math.isnan(best) and not math.isnan(value):
        return True
    return value > best if goal == "maximize" else value < best


def _epoch_metrics(epoch: int, cfg: TrainConfig, train_loss: float, val: Mapping[str, Any], lr: float,
                   samples_per_s: float, seconds: float) -> EpochMetrics:
    values = {name: float(val[name]) for name in CONFUSION_METRICS}
    values["loss"] = float(val["loss"])
    return EpochMetrics(
        epoch=epoch,
        epochs=cfg.epochs,
        train_loss=train_loss,
        val_loss=values["loss"],
        f1_macro=values["f1_macro"],
        f1_weighted=values["f1_weighted"],
        f1_per_class=_triplet(val, "f1"),
        lr=lr,
        samples_per_s=samples_per_s,
        seconds=seconds,
        values=values,
        precision_per_class=_triplet(val, "precision"),
        recall_per_class=_triplet(val, "recall"),
    )


def _epoch_line(m: EpochMetrics, metric: str) -> str:
    s, n, b = m.f1_per_class
    line = (
        f"Epoch {m.epoch}/{m.epochs} | Train Loss: {m.train_loss:.4f} | Val Loss: {m.val_loss:.4f} | "
        f"F1 Macro: {m.f1_macro:.4f} | F1 Weighted: {m.f1_weighted:.4f} | "
        f"F1 [S/N/B]: [{s:.3f}/{n:.3f}/{b:.3f}] | LR: {m.lr:.6f} | "
        f"{m.samples_per_s:,.0f} samples/s | {m.seconds:.1f}s"
    )
    if metric not in ("f1_macro", "f1_weighted", "loss"):  # those are on the line already
        line += f" | val {metric}: {m.value(metric):.4f}"
    return line


def train_model(
    model: nn.Module,
    train_ds: Any,
    val_ds: Any,
    cfg: TrainConfig | None = None,
    on_epoch: Callable[[EpochMetrics], Any] | None = None,
    checkpoint_fn: Callable[[nn.Module, EpochMetrics], Any] | None = None,
    quiet: bool = False,
) -> TrainResult:
    """Trains `model` in place and leaves it holding the weights of the best epoch by the
    validation `cfg.metric` in `cfg.goal`'s direction.

    `on_epoch(metrics)` is called after each epoch (Optuna reports and prunes from there; an
    exception it raises stops training and propagates). `checkpoint_fn(model, metrics)` is
    called on each improvement (the `model` asset saves the full bundle there); otherwise
    `cfg.checkpoint_path`, when set, receives the state_dict. `quiet` drops the loop's lines (an
    Optuna trial logs its own, shorter ones).
    """
    cfg = cfg or TrainConfig()
    say = (lambda _line: None) if quiet else log.info
    metric, goal = cfg.metric, cfg.goal
    device = pick_device(cfg.device)
    configure_device(device)
    torch.manual_seed(cfg.seed)
    model.to(device)
    n_params = count_parameters(model)
    say(f"Device: {device.type} | Parameters: {n_params:,}")

    train_batches = make_batches(train_ds, cfg.batch_size, True, device, seed=cfg.seed, num_workers=cfg.num_workers)
    val_batches = make_batches(val_ds, cfg.eval_batch_size or 2 * cfg.batch_size, False, device,
                               num_workers=cfg.num_workers)
    say(
        f"Train samples: {train_batches.n_samples:,} | Val samples: {val_batches.n_samples:,} | "
        f"Batch size: {cfg.batch_size} | Data: {train_batches.placement}"
    )
    if train_batches.n_samples == 0 or val_batches.n_samples == 0:
        raise ValueError("the training and validation sets must both hold at least one window")

    class_weights = class_weights_for(cfg, train_ds)
    say(_weights_line(cfg, class_weights))
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(class_weights, dtype=torch.float32, device=device))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.epochs, 1), eta_min=cfg.min_lr)

    history: list[EpochMetrics] = []
    best: EpochMetrics | None = None
    best_state = None
    epochs_without_gain = 0
    stopped_early = False
    n_batches = len(train_batches)
    if cfg.max_batches_per_epoch:
        n_batches = min(n_batches, cfg.max_batches_per_epoch)

    for epoch in range(1, cfg.epochs + 1):
        model.train()
        started = time.perf_counter()
        window_started, window_samples = started, 0
        loss_sum = torch.zeros((), device=device)
        seen = 0
        lr_now = optimizer.param_groups[0]["lr"]
        for batch_no, (x, y) in enumerate(train_batches, start=1):
            if batch_no > n_batches:
                break
            with autocast(device, cfg.amp):
                logits = model(x)
            loss = loss_fn(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            # accumulate on the device: no host sync per batch
            loss_sum += loss.detach() * y.shape[0]
            seen += y.shape[0]
            window_samples += y.shape[0]
            if cfg.log_every and batch_no % cfg.log_every == 0:
                now = time.perf_counter()
                say(
                    f"  Epoch {epoch} | Batch {batch_no}/{n_batches} | Loss: {loss.item():.4f} | "
                    f"{window_samples / max(now - window_started, 1e-9):,.0f} samples/s"
                )
                window_started, window_samples = now, 0
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds = time.perf_counter() - started
        scheduler.step()

        val = evaluate(model, None, device, loss_fn=loss_fn, amp=cfg.amp, batches=val_batches)
        metrics = _epoch_metrics(epoch, cfg, float(loss_sum) / max(seen, 1), val, lr_now,
                                 seen / max(train_seconds, 1e-9), time.perf_counter() - started)
        history.append(metrics)
        say(_epoch_line(metrics, metric))

        # the first epoch is always the best so far
        if best is None or _improves(metrics.value(metric), best.value(metric), goal):
            best, best_state = metrics, _state_on_cpu(model)
            epochs_without_gain = 0
            if checkpoint_fn is not None:
                checkpoint_fn(model, metrics)
            elif cfg.checkpoint_path:
                _atomic_torch_save({"state_dict": best_state, "epoch": epoch, "metric": metric,
                                    "value": metrics.value(metric), "f1_macro": metrics.f1_macro},
                                   cfg.checkpoint_path)
            say(f"✅ Best model saved (val {metric}: {metrics.value(metric):.4f})")
        else:
            epochs_without_gain += 1

        if on_epoch is not None:
            on_epoch(metrics)

        if cfg.patience and epochs_without_gain >= cfg.patience and epoch < cfg.epochs:
            say(f"⏹ Early stopping at epoch {epoch}: no val {metric} improvement for {cfg.patience} epochs "
                f"(best {best.value(metric):.4f} at epoch {best.epoch})")
            stopped_early = True
            break

    # epochs >= 1 and the first epoch always improves, so there is a best epoch
    assert best is not None and best_state is not None
    model.load_state_dict(best_state)
    return TrainResult(
        best_f1_macro=best.f1_macro,
        best_epoch=best.epoch,
        history=history,
        stopped_early=stopped_early,
        device=device.type,
        n_parameters=n_params,
        best_state=best_state,
        metric=metric,
        best_value=best.value(metric),
        class_weights=class_weights,
    )


# ---------------------------------------------------------------------------------------------
# The model bundle


def _plain(value: Any) -> Any:
    """JSON-like Python values only (numpy scalars / arrays, tuples, Paths converted), so the
    bundle loads with `torch.load(weights_only=True)`."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (Path, dt.date, dt.datetime)):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


def _atomic_torch_save(obj: Any, path: str | Path) -> Path:
    return atomic_write(path, lambda temp: torch.save(obj, temp))


def save_model(
    path: str | Path,
    model: nn.Module,
    spec: Mapping[str, Any] | None = None,
    feature_names: Sequence[str] | None = None,
    scaler_dict: Mapping[str, Any] | None = None,
    label_settings: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Writes ONE .pth (atomically: temp file, then rename) with the CPU weights, the
    architecture spec (`model.spec` when not given), features, scaling and label settings."""
    spec = spec if spec is not None else getattr(model, "spec", None)
    if spec is None:
        raise ValueError("a spec is needed (build the model with build_model, or pass spec=)")
    bundle = {
        "format": BUNDLE_FORMAT,
        "state_dict": _state_on_cpu(model),
        "spec": _plain(spec),
        "feature_names": _plain(list(feature_names or [])),
        "scaler": _plain(scaler_dict) if scaler_dict is not None else None,
        "label_settings": _plain(label_settings or {}),
        "metrics": _plain(metrics or {}),
        "extra": _plain(extra or {}),
        "saved_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "torch_version": str(torch.__version__),
    }
    if bundle["feature_names"] and len(bundle["feature_names"]) != int(bundle["spec"]["n_features"]):
        raise ValueError(
            f"{len(bundle['feature_names'])} feature names for a model of {bundle['spec']['n_features']} features"
        )
    return _atomic_torch_save(bundle, path)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode on `device`, bundle) from a `save_model` file; no config needed."""
    bundle = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{path} is not a {BUNDLE_FORMAT} bundle")
    model = build_from_spec(bundle["spec"])
    model.load_state_dict(bundle["state_dict"])
    model.spec = copy.deepcopy(bundle["spec"])
    model.to(pick_device(device)).eval()
    return model, bundle
