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

DEFAULT_RAW_ROOT = "data/L2/raw"
DEFAULT_DATA_DIR = "data"
DEFAULT_LOGS_DIR = "logs"
DEFAULT_SYMBOL = "BTCUSDT"
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
        # (measured: two generated days on two cores took 18 s in parallel, 7 s one by one).
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
    study_name: str = "quantgod"
    storage: str = "sqlite:///optuna_study.db"
    n_trials: int = 50
    timeout_s: float | None = None
    metric: str = "val_f1_macro"
    direction: str = "maximize"
    seed: int = 42
    epochs_per_trial: int = 10
    search_space: Mapping[str, Any] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class TrainingSettings:
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    class_weights: tuple[float, ...] = (2.0, 1.0, 2.0)
    model_type: str = "tcn_lstm"
    seq_len: int = 60
    n_levels: int = 20
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)  # the whole file, for TrainConfig.from_dict


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


def _optimization(data: Mapping[str, Any], source: str) -> OptimizationSettings:
    d = OptimizationSettings()
    timeout = data.get("timeout_s")
    return OptimizationSettings(
        study_name=_get(data, "study_name", d.study_name, str, source),
        storage=_get(data, "storage", d.storage, str, source),
        n_trials=_get(data, "n_trials", d.n_trials, int, source),
        timeout_s=None if timeout is None else _get(data, "timeout_s", None, float, source),
        metric=_get(data, "metric", d.metric, str, source),
        direction=_get(data, "direction", d.direction, str, source),
        seed=_get(data, "seed", d.seed, int, source),
        epochs_per_trial=_get(data, "epochs_per_trial", d.epochs_per_trial, int, source),
        search_space=dict(data.get("search_space") or {}),
        raw=dict(data),
    )


def _training(data: Mapping[str, Any], source: str) -> TrainingSettings:
    d = TrainingSettings()
    weights = data.get("class_weights") or d.class_weights
    try:
        weights = tuple(float(w) for w in weights)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: class_weights={weights!r} must be a list of numbers") from exc
    return TrainingSettings(
        epochs=_get(data, "epochs", d.epochs, int, source),
        batch_size=_get(data, "batch_size", d.batch_size, int, source),
        lr=_get(data, "lr", d.lr, float, source),
        class_weights=weights,
        model_type=_get(data, "model_type", d.model_type, str, source),
        seq_len=_get(data, "seq_len", d.seq_len, int, source),
        n_levels=_get(data, "n_levels", d.n_levels, int, source),
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
