"""Typed settings: `configs/{etl,labelling,optimization,training}.yaml` plus `QUANTGOD_*` variables.

The one way to read settings. Values are read when `load_settings()` is called (at run time, not at
import), so an environment variable set before a run always wins. Relative paths stay relative:
they mean "from the current directory" (the repository root for the README's commands).

Environment overrides:
    QUANTGOD_CONFIG_DIR   another folder holding the four YAML files (default: ./configs, else the repo's)
    QUANTGOD_RAW_ROOT     the archive root (paths.raw_root in etl.yaml; default data/L2/raw)
    QUANTGOD_DATA_DIR     outputs (default data)
    QUANTGOD_LOGS_DIR     file logs (default logs)
    QUANTGOD_SYMBOL       the symbol (default BTCUSDT)
    QUANTGOD_ML_PROFILE   a `profiles:` entry of optimization.yaml / training.yaml merged over them
                          (`small`: the CPU demo's 2 trials x 2 epochs, seq_len 30, 10 levels)
    QUANTGOD_OPTUNA_STORAGE  the Optuna storage URL (optimization.yaml `storage`)
    QUANTGOD_MLFLOW_URI   the MLflow tracking URI (training.yaml `mlflow.tracking_uri`)

This module does not import dagster.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ConfigError",
    "DownloadSettings",
    "EtlSettings",
    "LabellingSettings",
    "OptimizationSettings",
    "Paths",
    "RawRootMissingError",
    "Settings",
    "TrainingSettings",
    "config_dir",
    "load_settings",
    "partitions_start",
]

ENV_CONFIG_DIR = "QUANTGOD_CONFIG_DIR"
ENV_RAW_ROOT = "QUANTGOD_RAW_ROOT"
ENV_DATA_DIR = "QUANTGOD_DATA_DIR"
ENV_LOGS_DIR = "QUANTGOD_LOGS_DIR"
ENV_SYMBOL = "QUANTGOD_SYMBOL"
ENV_ML_PROFILE = "QUANTGOD_ML_PROFILE"
ENV_OPTUNA_STORAGE = "QUANTGOD_OPTUNA_STORAGE"
ENV_MLFLOW_URI = "QUANTGOD_MLFLOW_URI"

DEFAULT_RAW_ROOT = "data/L2/raw"
DEFAULT_DATA_DIR = "data"
DEFAULT_LOGS_DIR = "logs"
DEFAULT_SYMBOL = "BTCUSDT"
MODEL_FILE = "quantgod_cloud_model.pth"
DEFAULT_OPTUNA_STORAGE = "sqlite:///optuna_study.db"
DEFAULT_MLFLOW_URI = "sqlite:///mlflow.db"
DEFAULT_PARTITIONS_START = dt.date(2023, 1, 18)  # the first BTCUSDT day of Bybit's linear archive
DEFAULT_BASE_URL = "https://quote-saver.bycsi.com/orderbook/linear"

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A settings file or variable holds something unusable; the message names which."""


class RawRootMissingError(FileNotFoundError):
    """The archive root does not exist: usually an rclone / network mount that is down."""


# ---------------------------------------------------------------------------------------------
# The settings


@dataclass(frozen=True)
class Paths:
    raw_root: Path
    data_dir: Path
    logs_dir: Path
    raw_root_from_env: bool = False

    @property
    def preprocessed_dir(self) -> Path:
        return self.data_dir / "L2" / "pre_processed"

    @property
    def labelled_dir(self) -> Path:
        return self.data_dir / "L2" / "labelled"

    def preprocessed_path(self, day: dt.date | str) -> Path:
        day = dt.date.fromisoformat(day) if isinstance(day, str) else day
        return self.preprocessed_dir / f"{day.isoformat()}.parquet"

    @property
    def optimization_dir(self) -> Path:
        return self.data_dir / "optimization"

    @property
    def best_params_path(self) -> Path:
        return self.optimization_dir / "best_params.json"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def model_path(self) -> Path:
        return self.models_dir / MODEL_FILE

    def labelled_suffix_dir(self, suffix: str) -> Path:
        return self.labelled_dir / suffix

    def preprocessed_glob(self) -> str:
        return (self.preprocessed_dir / "*.parquet").as_posix()

    def require_raw_root(self) -> Path:
        """The archive root, or a failure that says which setting and that the mount may be down."""
        if not self.raw_root.is_dir():
            where = f"{ENV_RAW_ROOT}={self.raw_root}" if self.raw_root_from_env else (
                f"{self.raw_root} (paths.raw_root in etl.yaml; set {ENV_RAW_ROOT} to change it)")
            problem = "is not a folder" if self.raw_root.exists() else "does not exist"
            raise RawRootMissingError(
                f"the archive root {where} {problem}: if it is a mounted drive "
                "(rclone, network share, S3), the mount may be down"
            )
        return self.raw_root


@dataclass(frozen=True)
class DownloadSettings:
    enabled: bool = False
    base_url: str = DEFAULT_BASE_URL
    timeout_s: float = 60.0


ENGINE_CORES = 2  # cores one day's replay keeps busy


@dataclass(frozen=True)
class EtlSettings:
    partitions_start: dt.date = DEFAULT_PARTITIONS_START
    depths: tuple[int, ...] = (200, 500)
    workers: int | None = None  # None: all cores, two per day (see worker_count)
    max_silence_s: float = 60.0
    skip_bad_lines: bool = False
    gap_warn_share: float = 0.01
    gap_fail_share: float = 0.10
    download: DownloadSettings = field(default_factory=DownloadSettings)

    def worker_count(self, days: int) -> int:
        # One day's replay already keeps two cores busy (decompress, parse and replay threads
        # overlap), so all cores means one day per two cores: one per core oversubscribes them
        # (measured: two generated days on two cores took 18 s side by side in the demo, while one
        # day alone takes about 3.5 s: benchmarks/etl_bench.py).
        cores = os.cpu_count() or 1
        wanted = max(1, cores // ENGINE_CORES) if self.workers is None else self.workers
        return max(1, min(wanted, days))


@dataclass(frozen=True)
class LabellingSettings:
    lookahead: int = 60
    threshold_short: float = -0.004
    threshold_long: float = 0.008
    price_column: str = "micro_price"
    min_class_share: float = 0.02  # class_balance warns when a class holds less of a day's labelled rows

    @property
    def suffix(self) -> str:
        """The labelled folder's name, e.g. `SELL_0004_BUY_0008_1h` (see `labelling.label_suffix`)."""
        from .labelling import label_suffix

        return label_suffix(self.lookahead, self.threshold_short, self.threshold_long)


@dataclass(frozen=True)
class OptimizationSettings:
    study_name: str | None = None  # None: the label suffix
    storage: str = DEFAULT_OPTUNA_STORAGE
    n_trials: int = 50
    timeout_s: float | None = None
    metric: str = "val_f1_macro"
    direction: str = "maximize"
    seed: int = 42
    sampler_startup_trials: int = 10
    pruner_startup_trials: int = 5
    pruner_warmup_steps: int = 2
    epochs_per_trial: int = 10
    max_batches_per_epoch: int | None = None
    mlflow_experiment: str = "quantgod-optimization"
    search_space: Mapping[str, Any] = field(default_factory=dict)
    profile: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def study_for(self, label_suffix: str) -> str:
        return self.study_name or label_suffix


# the training.yaml keys that describe the model (the rest configure the loop, data, tracking)
MODEL_KEYS = ("arch", "seq_len", "n_levels", "tcn_channels", "lstm_hidden", "kernel_size", "lstm_layers",
              "d_model", "n_heads", "n_layers", "ff_mult", "dropout")


@dataclass(frozen=True)
class TrainingSettings:
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    class_weights: tuple[float, ...] = (2.0, 1.0, 2.0)
    arch: str = "tcn_lstm"
    seq_len: int = 60
    n_levels: int = 20
    max_batches_per_epoch: int | None = None
    data_start: dt.date | None = None  # None: the first labelled day present
    data_end: dt.date | None = None  # None: the last labelled day present
    split: tuple[float, float, float] = (0.70, 0.15, 0.15)
    fee: float = 0.00055  # per side, for the backtest
    mlflow_tracking_uri: str = DEFAULT_MLFLOW_URI
    mlflow_experiment: str = "quantgod"
    registered_model: str = "quantgod"
    profile: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)  # the whole file, for TrainConfig.from_dict

    @property
    def model_type(self) -> str:  # the older name of `arch`
        return self.arch

    def model_params(self) -> dict[str, Any]:
        """The model's parameters from the file (arch, seq_len, n_levels, sizes, dropout)."""
        params = {k: self.raw[k] for k in MODEL_KEYS if self.raw.get(k) is not None}
        params.update(arch=self.arch, seq_len=self.seq_len, n_levels=self.n_levels)
        return params

    def loop_config(self) -> dict[str, Any]:
        """The training loop's settings (for `ml.train.TrainConfig.from_dict`)."""
        loop = {k: v for k, v in self.raw.items() if k not in MODEL_KEYS and not isinstance(v, Mapping)}
        loop.update(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                    class_weights=list(self.class_weights), max_batches_per_epoch=self.max_batches_per_epoch)
        return loop


@dataclass(frozen=True)
class Settings:
    paths: Paths
    symbol: str
    etl: EtlSettings
    labelling: LabellingSettings
    optimization: OptimizationSettings
    training: TrainingSettings
    config_dir: Path


# ---------------------------------------------------------------------------------------------
# Reading


def config_dir(explicit: str | Path | None = None) -> Path:
    """QUANTGOD_CONFIG_DIR, else ./configs when it exists, else the repository's configs/."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(ENV_CONFIG_DIR)
    if env:
        path = Path(env)
        if not path.is_dir():
            raise ConfigError(f"{ENV_CONFIG_DIR}={env} is not a folder")
        return path
    local = Path("configs")
    if (local / "etl.yaml").is_file():
        return local
    return REPO_CONFIGS


def _read_yaml(folder: Path, name: str) -> dict[str, Any]:
    path = folder / name
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _get(data: Mapping[str, Any], key: str, default: Any, kind: type, source: str) -> Any:
    value = data.get(key, default)
    if value is None:
        return default
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
                return value.lower() in ("true", "yes", "1")
            raise ValueError(value)
        if kind is dt.date:
            return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {key}={value!r} is not a valid {kind.__name__}") from exc


def _share(value: float, key: str, source: str) -> float:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{source}: {key}={value} must be a share between 0 and 1")
    return value


def _etl(data: Mapping[str, Any], source: str) -> EtlSettings:
    checks = data.get("checks") or {}
    download = data.get("download") or {}
    d = EtlSettings()
    workers = data.get("workers")
    if workers is not None:
        workers = _get(data, "workers", None, int, source)
        if workers < 1:
            raise ConfigError(f"{source}: workers={workers} must be >= 1 (or null for all cores)")
    depths = tuple(int(x) for x in (data.get("depths") or d.depths))
    warn = _share(_get({**data, **checks}, "gap_warn_share", d.gap_warn_share, float, source), "gap_warn_share", source)
    fail = _share(_get({**data, **checks}, "gap_fail_share", d.gap_fail_share, float, source), "gap_fail_share", source)
    if warn > fail:
        raise ConfigError(f"{source}: gap_warn_share={warn} is above gap_fail_share={fail}")
    return EtlSettings(
        partitions_start=_get(data, "partitions_start", d.partitions_start, dt.date, source),
        depths=depths,
        workers=workers,
        max_silence_s=_get(data, "max_silence_s", d.max_silence_s, float, source),
        skip_bad_lines=_get(data, "skip_bad_lines", d.skip_bad_lines, bool, source),
        gap_warn_share=warn,
        gap_fail_share=fail,
        download=DownloadSettings(
            enabled=_get(download, "enabled", False, bool, source + " download"),
            base_url=str(download.get("base_url") or DEFAULT_BASE_URL).rstrip("/"),
            timeout_s=_get(download, "timeout_s", 60.0, float, source + " download"),
        ),
    )


def _paths(data: Mapping[str, Any]) -> Paths:
    paths = data.get("paths") or {}
    env_root = os.environ.get(ENV_RAW_ROOT)
    return Paths(
        raw_root=Path(env_root or paths.get("raw_root") or DEFAULT_RAW_ROOT),
        data_dir=Path(os.environ.get(ENV_DATA_DIR) or paths.get("data_dir") or DEFAULT_DATA_DIR),
        logs_dir=Path(os.environ.get(ENV_LOGS_DIR) or paths.get("logs_dir") or DEFAULT_LOGS_DIR),
        raw_root_from_env=bool(env_root),
    )


def _labelling(data: Mapping[str, Any], source: str) -> LabellingSettings:
    d = LabellingSettings()
    return LabellingSettings(
        lookahead=_get(data, "lookahead", d.lookahead, int, source),
        threshold_short=_get(data, "threshold_short", d.threshold_short, float, source),
        threshold_long=_get(data, "threshold_long", d.threshold_long, float, source),
        price_column=_get(data, "price_column", d.price_column, str, source),
        min_class_share=_share(
            _get(data, "min_class_share", d.min_class_share, float, source), "min_class_share", source
        ),
    )


def _merge(base: Mapping[str, Any], changes: Mapping[str, Any], replace: tuple[str, ...] = ()) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        if key not in replace and isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _with_profile(data: Mapping[str, Any], source: str) -> tuple[dict[str, Any], str | None]:
    """The file's settings with the `profiles:` entry named by QUANTGOD_ML_PROFILE merged over them."""
    profiles = data.get("profiles") or {}
    base = {k: v for k, v in data.items() if k != "profiles"}
    name = os.environ.get(ENV_ML_PROFILE) or None
    if name is None:
        return base, None
    if name not in profiles:
        if not data:  # an absent file: defaults, nothing to name
            return base, None
        raise ConfigError(f"{source}: {ENV_ML_PROFILE}={name} but profiles: has only {sorted(profiles) or 'none'}")
    return _merge(base, profiles[name] or {}, replace=("search_space",)), name


def _optional(data: Mapping[str, Any], key: str, kind: type, source: str) -> Any:
    return None if data.get(key) is None else _get(data, key, None, kind, source)


def _optimization(data: Mapping[str, Any], source: str) -> OptimizationSettings:
    data, profile = _with_profile(data, source)
    d = OptimizationSettings()
    pruner = data.get("pruner")
    pruner = pruner if isinstance(pruner, Mapping) else {}
    space = data.get("search_space") or {}
    if not isinstance(space, Mapping):
        raise ConfigError(f"{source}: search_space must be a mapping of parameter -> spec")
    # `model_type` is the older name of `arch`
    space = {("arch" if k == "model_type" else k): v for k, v in space.items()}
    return OptimizationSettings(
        study_name=_optional(data, "study_name", str, source),
        storage=os.environ.get(ENV_OPTUNA_STORAGE) or _get(data, "storage", d.storage, str, source),
        n_trials=_get(data, "n_trials", d.n_trials, int, source),
        timeout_s=_optional(data, "timeout_s", float, source),
        metric=_get(data, "metric", d.metric, str, source),
        direction=_get(data, "direction", d.direction, str, source),
        seed=_get(data, "seed", d.seed, int, source),
        sampler_startup_trials=_get(data, "sampler_startup_trials", d.sampler_startup_trials, int, source),
        pruner_startup_trials=_get(pruner, "n_startup_trials", d.pruner_startup_trials, int, source + " pruner"),
        pruner_warmup_steps=_get(pruner, "n_warmup_steps", d.pruner_warmup_steps, int, source + " pruner"),
        epochs_per_trial=_get(data, "epochs_per_trial", d.epochs_per_trial, int, source),
        max_batches_per_epoch=_optional(data, "max_batches_per_epoch", int, source),
        mlflow_experiment=_get(data, "mlflow_experiment", d.mlflow_experiment, str, source),
        search_space=space,
        profile=profile,
        raw=dict(data),
    )


def _training(data: Mapping[str, Any], source: str) -> TrainingSettings:
    data, profile = _with_profile(data, source)
    d = TrainingSettings()
    weights = data.get("class_weights") or d.class_weights
    try:
        weights = tuple(float(w) for w in weights)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: class_weights={weights!r} must be a list of numbers") from exc
    if len(weights) != 3:
        raise ConfigError(f"{source}: class_weights={list(weights)} must hold 3 numbers (SELL, NEUTRAL, BUY)")
    if "arch" not in data and "model_type" in data:
        data = {**data, "arch": data["model_type"]}
    data.pop("model_type", None)
    arch = _get(data, "arch", d.arch, str, source)
    if arch not in ("tcn_lstm", "transformer"):
        raise ConfigError(f"{source}: arch={arch!r} must be tcn_lstm or transformer")
    window = data.get("data") or {}
    split = data.get("split") or {}
    try:
        fractions = tuple(float(split.get(k, v)) for k, v in zip(("train", "val", "test"), d.split))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: split={split!r} must hold numbers") from exc
    if min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(f"{source}: split train/val/test={list(fractions)} must be shares summing to 1")
    start = _optional(window, "start", dt.date, source + " data")
    end = _optional(window, "end", dt.date, source + " data")
    if start and end and end < start:
        raise ConfigError(f"{source}: data.end={end} is before data.start={start}")
    backtest = data.get("backtest") or {}
    mlflow = data.get("mlflow") or {}
    tracking = os.environ.get(ENV_MLFLOW_URI) or _get(mlflow, "tracking_uri", d.mlflow_tracking_uri, str,
                                                       source + " mlflow")
    return TrainingSettings(
        epochs=_get(data, "epochs", d.epochs, int, source),
        batch_size=_get(data, "batch_size", d.batch_size, int, source),
        lr=_get(data, "lr", d.lr, float, source),
        class_weights=weights,
        arch=arch,
        seq_len=_get(data, "seq_len", d.seq_len, int, source),
        n_levels=_get(data, "n_levels", d.n_levels, int, source),
        max_batches_per_epoch=_optional(data, "max_batches_per_epoch", int, source),
        data_start=start,
        data_end=end,
        split=fractions,  # type: ignore[arg-type]
        fee=_get(backtest, "fee", d.fee, float, source + " backtest"),
        mlflow_tracking_uri=tracking,
        mlflow_experiment=_get(mlflow, "experiment", d.mlflow_experiment, str, source + " mlflow"),
        registered_model=_get(mlflow, "registered_model", d.registered_model, str, source + " mlflow"),
        profile=profile,
        raw=dict(data),
    )


def load_settings(config_folder: str | Path | None = None) -> Settings:
    folder = config_dir(config_folder)
    etl = _read_yaml(folder, "etl.yaml")
    symbol = os.environ.get(ENV_SYMBOL) or etl.get("symbol") or DEFAULT_SYMBOL
    return Settings(
        paths=_paths(etl),
        symbol=str(symbol),
        etl=_etl(etl, str(folder / "etl.yaml")),
        labelling=_labelling(_read_yaml(folder, "labelling.yaml"), str(folder / "labelling.yaml")),
        optimization=_optimization(_read_yaml(folder, "optimization.yaml"), str(folder / "optimization.yaml")),
        training=_training(_read_yaml(folder, "training.yaml"), str(folder / "training.yaml")),
        config_dir=folder,
    )


def partitions_start(config_folder: str | Path | None = None) -> dt.date:
    """Read once at import by `partitions.py`: the partitions object is static."""
    folder = config_dir(config_folder)
    return _etl(_read_yaml(folder, "etl.yaml"), str(folder / "etl.yaml")).partitions_start
