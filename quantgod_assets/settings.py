"""Typed settings: `configs/{etl,labelling,optimization,training}.yaml` plus `QUANTGOD_*` variables.

The one way to read settings, and the one place their defaults live: each YAML file is validated
against a pydantic model below (`extra="forbid"`, frozen), so a misspelt key fails at load with a
`ConfigError` naming the key and the file (`configs/training.yaml: unknown key 'epoch' (did you
mean 'epochs'?)`) instead of being silently ignored. Values are read when `load_settings()` is
called (at run time, not at import), so an environment variable set before a run always wins.
Relative paths stay relative: they mean "from the current directory" (the repository root for
the README's commands).

Environment overrides:
    QUANTGOD_CONFIG_DIR   another folder holding the four YAML files (default: ./configs, else the repo's)
    QUANTGOD_RAW_ROOT     the archive root (paths.raw_root in etl.yaml; default data/L2/raw)
    QUANTGOD_DATA_DIR     outputs (default data)
    QUANTGOD_LOGS_DIR     file logs (default logs)
    QUANTGOD_SYMBOL       one instrument instead of etl.yaml's `instruments:` list: `ETHUSDT` (linear)
                          or `ETHUSDT_spot` (the symbol must match ^[A-Z0-9]{2,30}$)
    QUANTGOD_ML_PROFILE   a `profiles:` entry of optimization.yaml / training.yaml merged over them
                          (`small`: the CPU demo's 2 trials x 2 epochs, seq_len 30, 10 levels)
    QUANTGOD_OPTUNA_STORAGE  the Optuna storage URL (optimization.yaml `storage`)
    QUANTGOD_MLFLOW_URI   the MLflow tracking URI (training.yaml `mlflow.tracking_uri`)

This module does not import dagster.
"""

from __future__ import annotations

import datetime as dt
import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from .archive import SYMBOL_PATTERN

__all__ = [
    "METRIC_DIRECTIONS",
    "BacktestSettings",
    "ConfigError",
    "DataWindow",
    "DownloadSettings",
    "EtlSettings",
    "EvaluationSettings",
    "GapChecks",
    "Instrument",
    "LabellingSettings",
    "LiveSettings",
    "LoopSettings",
    "MlflowSettings",
    "ModelSettings",
    "OptimizationSettings",
    "Paths",
    "PrunerSettings",
    "RawRootMissingError",
    "SearchParam",
    "Settings",
    "SplitShares",
    "TrainingSettings",
    "automation_settings",
    "config_dir",
    "configured_instruments",
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

MODEL_FILE = "quantgod_cloud_model.pth"
CHAMPION_FILE = "champion.pth"
ENGINE_CORES = 2  # cores one day's replay keeps busy

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A settings file or variable holds something unusable; the message names which."""


class RawRootMissingError(FileNotFoundError):
    """The archive root does not exist: usually an rclone / network mount that is down."""


class _Schema(BaseModel):
    """A section of a settings file: unknown keys rejected, values immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _share(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError("must be a share between 0 and 1")
    return value


def _yes_no(value: Any) -> Any:
    """YAML's own booleans, plus the words an environment-minded user may write as strings."""
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
        return value.lower() in ("true", "yes", "1")
    return value


Share = Annotated[float, AfterValidator(_share)]
Flag = Annotated[bool, BeforeValidator(_yes_no)]


# ---------------------------------------------------------------------------------------------
# etl.yaml


Category = Literal["linear", "spot", "inverse"]
CATEGORIES: tuple[str, ...] = ("linear", "spot", "inverse")


def _symbol(value: str) -> str:
    if not re.fullmatch(SYMBOL_PATTERN, value):
        raise ValueError(f"must match {SYMBOL_PATTERN} (upper-case letters and digits, e.g. BTCUSDT)")
    return value


# the symbol becomes part of archive paths and download URLs: nothing that could change either
Symbol = Annotated[str, AfterValidator(_symbol)]


class Instrument(_Schema):
    """One entry of etl.yaml `instruments:`: a symbol in one of Bybit's archive categories."""

    symbol: Symbol
    category: Category = "linear"
    first_day: dt.date | None = None  # the instrument's first archive day (None: partitions_start)

    @property
    def key(self) -> str:
        """`BTCUSDT_linear`: the asset key prefix and the folder name of everything per instrument."""
        return f"{self.symbol}_{self.category}"

    def __str__(self) -> str:
        return f"{self.symbol} {self.category}"


DEFAULT_INSTRUMENT = Instrument(symbol="BTCUSDT", category="linear")


def parse_instrument(text: str) -> Instrument:
    """`ETHUSDT` (linear) or `ETHUSDT_spot`, as QUANTGOD_SYMBOL and the CLI's --instrument take it."""
    symbol, _, category = text.partition("_")
    if category and category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r} in {text!r} (one of {', '.join(CATEGORIES)})")
    return Instrument(symbol=symbol, category=category or "linear")


class Paths(_Schema):
    """etl.yaml `paths:` (QUANTGOD_RAW_ROOT / _DATA_DIR / _LOGS_DIR win) and the paths derived from them."""

    raw_root: Path = Path("data/L2/raw")
    data_dir: Path = Path("data")
    logs_dir: Path = Path("logs")
    # set by load_settings, not by the file: whether QUANTGOD_RAW_ROOT chose raw_root (error messages)
    _raw_root_from_env: bool = PrivateAttr(default=False)
    # the instrument the daily paths belong to, and the instruments a model is trained on (its
    # optimization and model folders): set by Settings, never by the file
    _instrument: Instrument | None = PrivateAttr(default=None)
    _model_key: str | None = PrivateAttr(default=None)

    @property
    def raw_root_from_env(self) -> bool:
        return self._raw_root_from_env

    @property
    def instrument(self) -> Instrument:
        return self._instrument or DEFAULT_INSTRUMENT

    def for_instrument(self, instrument: Instrument, model_key: str | None = None) -> Paths:
        """These paths with the daily folders of `instrument` (and the model folders of `model_key`)."""
        paths = self.model_copy()
        paths._instrument = instrument
        paths._model_key = model_key if model_key is not None else self._model_key
        return paths

    @property
    def instrument_dir(self) -> Path:
        """`{data_dir}/L2/{category}/{SYMBOL}`: the archive's own order (orderbook/linear/BTCUSDT)."""
        return self.data_dir / "L2" / self.instrument.category / self.instrument.symbol

    @property
    def legacy_preprocessed_dir(self) -> Path:
        """Where books were written before instruments (one symbol): `quantgod migrate` moves them."""
        return self.data_dir / "L2" / "pre_processed"

    @property
    def legacy_labelled_dir(self) -> Path:
        return self.data_dir / "L2" / "labelled"

    @property
    def preprocessed_dir(self) -> Path:
        return self.instrument_dir / "pre_processed"

    @property
    def labelled_dir(self) -> Path:
        return self.instrument_dir / "labelled"

    def preprocessed_path(self, day: dt.date | str) -> Path:
        day = dt.date.fromisoformat(day) if isinstance(day, str) else day
        return self.preprocessed_dir / f"{day.isoformat()}.parquet"

    @property
    def model_key(self) -> str:
        """The training instruments' folder name (`BTCUSDT_linear`, `BTCUSDT_linear+ETHUSDT_linear`)."""
        return self._model_key or self.instrument.key

    @property
    def optimization_dir(self) -> Path:
        return self.data_dir / "optimization" / self.model_key

    @property
    def best_params_path(self) -> Path:
        return self.optimization_dir / "best_params.json"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models" / self.model_key

    @property
    def model_path(self) -> Path:
        """The model the last `model` run trained (champion or not)."""
        return self.models_dir / MODEL_FILE

    def predictions_path(self, model_version: str, day: dt.date | str) -> Path:
        """`{data_dir}/predictions/{instrument}/{model version}/{YYYY-MM-DD}.parquet`."""
        day = dt.date.fromisoformat(day) if isinstance(day, str) else day
        return self.data_dir / "predictions" / self.instrument.key / model_version / f"{day.isoformat()}.parquet"

    @property
    def champion_path(self) -> Path:
        """A copy of the registry champion's bundle: what predictions use (`champion.json` beside it says which)."""
        return self.models_dir / CHAMPION_FILE

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


class DownloadSettings(_Schema):
    """etl.yaml `download:`: fetching a missing day from Bybit's public archive."""

    enabled: Flag = False
    base_url: str = "https://quote-saver.bycsi.com/orderbook"  # + /{category}/{SYMBOL}/{file}
    timeout_s: float = Field(60.0, gt=0)  # each socket read (and the connection)
    deadline_s: float = Field(1800.0, gt=0)  # one file's whole transfer
    max_bytes: int = Field(2 << 30, gt=0)  # one file's size (a real day is ~360 MB)

    @field_validator("base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")


class GapChecks(_Schema):
    """etl.yaml `checks:`: the `gaps` check's thresholds (shares of invalid seconds)."""

    gap_warn_share: Share = 0.01
    gap_fail_share: Share = 0.10

    @model_validator(mode="after")
    def _warn_below_fail(self) -> GapChecks:
        if self.gap_warn_share > self.gap_fail_share:
            raise ValueError(f"gap_warn_share={self.gap_warn_share} is above gap_fail_share={self.gap_fail_share}")
        return self


class AutomationSettings(_Schema):
    """etl.yaml `automation:`: the sensor that processes new days found on the archive root."""

    enabled: Flag = False  # the sensor's state when the definitions load (the UI can start / stop it any time)
    interval_s: int = Field(300, ge=30)  # seconds between looks at the archive root
    max_days_per_tick: int = Field(7, ge=1)  # newest first: a years-old archive is a backfill, not a tick
    download_cron: str = "30 3 * * *"  # UTC; with download enabled, fetch yesterday's day (Bybit publishes D on D+1)
    retrain: Flag = False  # the retraining schedule's state when the definitions load
    retrain_cron: str = "0 4 * * 0"  # UTC; optimization then model over training.yaml's `data` range


class EtlSettings(_Schema):
    """etl.yaml without `paths:` and `symbol:` (those are `Settings.paths` / `Settings.symbol`)."""

    partitions_start: dt.date = dt.date(2023, 1, 18)  # the first BTCUSDT day of Bybit's linear archive
    depths: tuple[int, ...] = (200, 500)
    workers: int | None = None  # None: all cores, two per day (see worker_count)
    max_silence_s: float = 60.0
    skip_bad_lines: Flag = False
    max_line_bytes: int = Field(default=64 << 20, ge=1)  # longer is a bad line (a real line is ~1-25 KB)
    checks: GapChecks = GapChecks()
    download: DownloadSettings = DownloadSettings()
    automation: AutomationSettings = AutomationSettings()

    @field_validator("workers")
    @classmethod
    def _at_least_one(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError("must be >= 1 (or null for all cores)")
        return value

    @property
    def gap_warn_share(self) -> float:
        return self.checks.gap_warn_share

    @property
    def gap_fail_share(self) -> float:
        return self.checks.gap_fail_share

    def worker_count(self, days: int) -> int:
        # One day's replay already keeps two cores busy (decompress, parse and replay threads
        # overlap), so all cores means one day per two cores: one per core oversubscribes them
        # (measured: two generated days on two cores took 18 s side by side in the demo, while one
        # day alone takes about 3.5 s: benchmarks/etl_bench.py).
        cores = os.cpu_count() or 1
        wanted = max(1, cores // ENGINE_CORES) if self.workers is None else self.workers
        return max(1, min(wanted, days))


class _EtlFile(EtlSettings):
    """The whole of etl.yaml: the ETL settings plus the run-wide `paths:` and `instruments:`
    (`symbol:`, the older one-instrument form, still read: a linear instrument)."""

    paths: Paths = Paths()
    symbol: Symbol | None = None
    instruments: tuple[Instrument, ...] | None = None

    @model_validator(mode="after")
    def _one_way_to_name_instruments(self) -> _EtlFile:
        if self.symbol is not None and self.instruments is not None:
            raise ValueError("give `instruments:` or the older `symbol:`, not both")
        if self.instruments is not None:
            if not self.instruments:
                raise ValueError("instruments: lists no instrument")
            keys = [i.key for i in self.instruments]
            twice = sorted({k for k in keys if keys.count(k) > 1})
            if twice:
                raise ValueError(f"instruments: {', '.join(twice)} listed twice")
        return self

    def instrument_list(self) -> tuple[Instrument, ...]:
        """The configured instruments, each with its first day (partitions_start when not given)."""
        listed = self.instruments or (Instrument(symbol=self.symbol or DEFAULT_INSTRUMENT.symbol),)
        return tuple(i if i.first_day else i.model_copy(update={"first_day": self.partitions_start})
                     for i in listed)


# ---------------------------------------------------------------------------------------------
# labelling.yaml


class LabellingSettings(_Schema):
    lookahead: int = 60
    threshold_short: float = -0.004
    threshold_long: float = 0.008
    price_column: str = "micro_price"
    min_class_share: Share = 0.02  # class_balance warns when a class holds less of a day's labelled rows

    @model_validator(mode="after")
    def _labels_can_be_named(self) -> LabellingSettings:
        # the labelling's own rules (lookahead >= 1, short <= 0 <= long, a nameable suffix), at load
        # rather than when the first stage asks for the folder name
        self.suffix  # noqa: B018 - computed for the ValueError it raises
        return self

    @property
    def suffix(self) -> str:
        """The labelled folder's name, e.g. `SELL_0004_BUY_0008_1h` (see `labelling.label_suffix`)."""
        from .labelling import label_suffix

        return label_suffix(self.lookahead, self.threshold_short, self.threshold_long)


# ---------------------------------------------------------------------------------------------
# training.yaml


Arch = Literal["tcn_lstm", "transformer"]


class ModelSettings(_Schema):
    """The training.yaml keys that describe the model. None: the architecture's own default
    (`ml.models.ARCHITECTURES`); keys of the other architecture are ignored by it."""

    arch: Arch = "tcn_lstm"
    seq_len: int = Field(60, ge=1, le=720)  # minutes per window
    n_levels: int = Field(20, ge=1, le=200)  # book levels per side used as features
    tcn_channels: int | None = None
    lstm_hidden: int | None = None
    kernel_size: int | None = None
    lstm_layers: int | None = None
    d_model: int | None = None
    n_heads: int | None = None
    n_layers: int | None = None
    ff_mult: int | None = None
    dropout: float | None = None

    def model_params(self) -> dict[str, Any]:
        """The model's parameters that are set (arch, seq_len, n_levels, sizes, dropout)."""
        return {k: v for k, v in self.model_dump(include=set(ModelSettings.model_fields)).items() if v is not None}


class LoopSettings(_Schema):
    """The training loop's training.yaml keys (what `ml.train.TrainConfig` adds to is code-only)."""

    epochs: int = Field(20, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, ge=0)
    weight_decay: float = Field(1e-4, ge=0)
    min_lr: float = Field(1e-6, ge=0)  # CosineAnnealingLR's eta_min
    # SELL, NEUTRAL, BUY; "auto": the inverse of the training windows' class priors (n / (3 n_c))
    class_weights: tuple[float, float, float] | Literal["auto"] = "auto"
    patience: int = Field(5, ge=0)  # epochs without a better validation metric before stopping; 0: never
    grad_clip: float | None = 1.0
    log_every: int = Field(200, ge=0)  # batches between progress lines; 0: none
    max_batches_per_epoch: int | None = Field(None, ge=1)  # a cap for smoke runs; None: every batch
    seed: int = 42
    device: str = "auto"  # auto | cpu | cuda | mps (or cuda:1 ...)
    amp: Flag = True  # bf16 autocast on CUDA

    @field_validator("class_weights", mode="before")
    @classmethod
    def _three_weights(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)) and len(value) != 3:
            raise ValueError("must hold 3 numbers (SELL, NEUTRAL, BUY)")
        if isinstance(value, (list, tuple)) and any(not isinstance(v, (int, float)) or v < 0 for v in value):
            raise ValueError("must hold 3 non-negative numbers (SELL, NEUTRAL, BUY)")
        return value


class DataWindow(_Schema):
    """training.yaml `data:`: the labelled days used by `optimization` and `model`."""

    start: dt.date | None = None  # None: the first labelled day present
    end: dt.date | None = None  # None: the last labelled day present

    @model_validator(mode="after")
    def _ordered(self) -> DataWindow:
        if self.start and self.end and self.end < self.start:
            raise ValueError(f"end={self.end} is before start={self.start}")
        return self


class SplitShares(_Schema):
    """training.yaml `split:`: the share of the windows, at the end of the range, that forms the
    test block (scored once, never choosing anything). Everything before it is the development
    period, cut into optimization.yaml `folds` walk-forward folds."""

    test: float = Field(0.15, gt=0, lt=1)

    @model_validator(mode="before")
    @classmethod
    def _no_train_val_shares(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and ({"train", "val"} & set(data)):
            raise ValueError(
                "split.train and split.val are gone: the development period (everything before the test "
                "block) is cut into optimization.yaml `folds` walk-forward folds; keep only split.test"
            )
        return data


class BacktestSettings(_Schema):
    """training.yaml `backtest:`: trades at the side of the book, with fees and slippage."""

    fee: float = Field(0.00055, ge=0)  # per side (Bybit taker 0.055 %)
    slippage_bps: float = Field(0.0, ge=0)  # per side, beyond the best bid / ask
    min_trades: int = Field(30, ge=2)  # fewer trades: Sharpe reads "n/a (k trades)"


class EvaluationSettings(_Schema):
    """training.yaml `evaluation:`: the moving-block bootstrap behind every interval."""

    block_minutes: int | None = Field(None, ge=1)  # None: max(lookahead, seq_len): windows share labels and inputs
    resamples: int = Field(1000, ge=100)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    seed: int = 7


class LiveSettings(_Schema):
    """training.yaml `live:`: how `live_performance` judges the champion on the days after its training range."""

    window_days: int = Field(7, ge=1)  # rolling window of the live macro-F1 and of the drift measure
    psi_threshold: float = Field(0.25, gt=0)  # population stability index above which an input has drifted


class MlflowSettings(_Schema):
    tracking_uri: str = "sqlite:///mlflow.db"  # QUANTGOD_MLFLOW_URI wins
    experiment: str = "quantgod"
    registered_model: str = "quantgod"


def _arch_from_model_type(data: Any) -> Any:
    """`model_type` is the older name of `arch` (`arch` wins when both are given)."""
    if isinstance(data, Mapping) and "model_type" in data:
        data = dict(data)
        model_type = data.pop("model_type")
        data.setdefault("arch", model_type)
    return data


class TrainingSettings(LoopSettings, ModelSettings):
    """training.yaml: the model, the loop, the data window, the split, the backtest, MLflow."""

    seeds: int = Field(3, ge=1)  # final models trained (seed, seed+1, ...): test metrics as mean ± std
    data: DataWindow = DataWindow()
    split: SplitShares = SplitShares()
    backtest: BacktestSettings = BacktestSettings()
    evaluation: EvaluationSettings = EvaluationSettings()
    live: LiveSettings = LiveSettings()
    mlflow: MlflowSettings = MlflowSettings()
    # etl.yaml instrument keys (`ETHUSDT_linear`) or bare symbols the model trains on: windows never
    # cross instruments, one calendar cut for all (None: the first configured instrument)
    instruments: tuple[str, ...] | None = None
    # instruments the model never trains on, scored over the same test period (the unseen-instrument test)
    unseen_instruments: tuple[str, ...] = ()
    _profile: str | None = PrivateAttr(default=None)

    _old_names = model_validator(mode="before")(_arch_from_model_type)

    @property
    def profile(self) -> str | None:
        """The QUANTGOD_ML_PROFILE entry merged in, if any."""
        return self._profile

    def with_params(self, params: Mapping[str, Any]) -> TrainingSettings:
        """These settings with `params` (a trial's values, best_params.json) over them, validated:
        a key that is not a training setting fails here."""
        merged = {**self.model_dump(exclude_unset=False), **_arch_from_model_type(dict(params))}
        try:
            changed = TrainingSettings.model_validate(merged)
        except ValidationError as exc:
            raise ConfigError(_explain(exc, "params", TrainingSettings)) from exc
        changed._profile = self._profile
        return changed


# ---------------------------------------------------------------------------------------------
# optimization.yaml


def _bare_value(spec: Any) -> Any:
    """A bare value in a search space is a fixed one."""
    return spec if isinstance(spec, Mapping) else {"type": "fixed", "value": spec}


class SearchParam(_Schema):
    """One search_space entry: categorical (choices), float / int (low, high, log, step) or fixed
    (value); `when: {arch: transformer}` draws it only when the earlier values match."""

    type: Literal["categorical", "float", "int", "fixed"]
    choices: tuple[Any, ...] | None = None
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: int | float | None = None
    value: Any = None
    when: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _complete(self) -> SearchParam:
        needed = {"categorical": ("choices",), "float": ("low", "high"), "int": ("low", "high")}.get(self.type, ())
        missing = [key for key in needed if getattr(self, key) is None]
        if missing:
            raise ValueError(f"a {self.type} entry needs {', '.join(missing)}")
        return self

    def as_dict(self) -> dict[str, Any]:
        """The entry as written in the file (for logging the space)."""
        return self.model_dump(exclude_unset=True)


class PrunerSettings(_Schema):
    """optimization.yaml `pruner:` (MedianPruner)."""

    n_startup_trials: int = Field(5, ge=0)  # no pruning until this many trials finished
    n_warmup_steps: int = Field(2, ge=0)  # no pruning before this step (fold index x epochs_per_trial + epoch)


# validation metrics a study and the loop can select by, and the direction each is better in
Direction = Literal["maximize", "minimize"]
METRIC_DIRECTIONS: dict[str, Direction] = {
    "f1_macro": "maximize",
    "f1_weighted": "maximize",
    "accuracy": "maximize",
    "balanced_accuracy": "maximize",  # the mean of the per-class recalls
    "loss": "minimize",  # the class-weighted cross-entropy
}
Metric = Literal["f1_macro", "f1_weighted", "accuracy", "balanced_accuracy", "loss"]


def _metric_name(value: Any) -> Any:
    """`val_f1_macro` (the older spelling) is `f1_macro`."""
    if isinstance(value, str) and value.startswith("val_"):
        return value[len("val_"):]
    return value


class OptimizationSettings(_Schema):
    study_name: str | None = None  # None: named after labels, profile, data range and a hash of what is searched
    storage: str = "sqlite:///optuna_study.db"  # QUANTGOD_OPTUNA_STORAGE wins
    n_trials: int = Field(50, ge=1)  # trials each run adds to its study
    timeout_s: float | None = None
    # the objective: every trial's mean validation value over the walk-forward folds; it also
    # drives early stopping and the checkpoint of every training (trials and the final model)
    metric: Annotated[Metric, BeforeValidator(_metric_name)] = "f1_macro"
    direction: Direction | None = None  # None: the metric's own
    folds: int = Field(5, ge=1, le=20)  # walk-forward folds over the development period
    embargo_minutes: int = Field(0, ge=0)  # dropped after the purge at every fold and test boundary
    seed: int = 42  # TPE sampler seed (trial k trains with seed + k)
    sampler_startup_trials: int = Field(10, ge=0)
    pruner: PrunerSettings = PrunerSettings()
    epochs_per_trial: int = Field(10, ge=1)
    max_batches_per_epoch: int | None = Field(None, ge=1)
    mlflow_experiment: str = "quantgod-optimization"
    search_space: dict[str, Annotated[SearchParam, BeforeValidator(_bare_value)]] = Field(default_factory=dict)
    _profile: str | None = PrivateAttr(default=None)

    @field_validator("search_space", mode="before")
    @classmethod
    def _arch_key(cls, space: Any) -> Any:
        # `model_type` is the older name of `arch`
        if isinstance(space, Mapping):
            return {("arch" if k == "model_type" else k): v for k, v in space.items()}
        return space

    @model_validator(mode="after")
    def _direction_fits_metric(self) -> OptimizationSettings:
        natural = METRIC_DIRECTIONS[self.metric]
        if self.direction is not None and self.direction != natural:
            raise ValueError(f"direction {self.direction!r} contradicts metric {self.metric!r}, "
                             f"which is better when it is {'higher' if natural == 'maximize' else 'lower'}")
        return self

    @property
    def profile(self) -> str | None:
        """The QUANTGOD_ML_PROFILE entry merged in, if any."""
        return self._profile

    @property
    def goal(self) -> Direction:
        """"maximize" or "minimize": the direction given, else the metric's own."""
        return self.direction or METRIC_DIRECTIONS[self.metric]


# ---------------------------------------------------------------------------------------------
# All of it


class Settings(_Schema):
    """Everything, for one instrument at a time: `instrument` is the one the daily paths and the
    daily stages work on (the first configured unless `for_instrument` chose another)."""

    paths: Paths
    instruments: tuple[Instrument, ...]
    instrument: Instrument
    etl: EtlSettings
    labelling: LabellingSettings
    optimization: OptimizationSettings
    training: TrainingSettings
    config_dir: Path

    @property
    def symbol(self) -> str:
        return self.instrument.symbol

    def find_instrument(self, name: str | Instrument, what: str = "instrument") -> Instrument:
        """A configured instrument by key (`ETHUSDT_spot`), bare symbol (`ETHUSDT`: the only one of that
        symbol) or value; a ConfigError naming the configured ones otherwise."""
        if isinstance(name, Instrument):
            name = name.key
        by_key = {i.key: i for i in self.instruments}
        if name in by_key:
            return by_key[name]
        same_symbol = [i for i in self.instruments if i.symbol == name]
        if len(same_symbol) == 1:
            return same_symbol[0]
        known = ", ".join(by_key)
        if same_symbol:
            raise ConfigError(f"{what} {name!r} is ambiguous: say which of {known}")
        raise ConfigError(f"{what} {name!r} is not a configured instrument (etl.yaml instruments: {known})")

    @property
    def training_instruments(self) -> tuple[Instrument, ...]:
        """training.yaml `instruments` (default: the first configured instrument)."""
        names = self.training.instruments or (self.instruments[0].key,)
        return tuple(self.find_instrument(n, "training.instruments entry") for n in names)

    @property
    def unseen_instruments(self) -> tuple[Instrument, ...]:
        """training.yaml `unseen_instruments`: scored on the test period, never trained on."""
        found = tuple(self.find_instrument(n, "training.unseen_instruments entry")
                      for n in self.training.unseen_instruments)
        overlap = [i.key for i in found if i in self.training_instruments]
        if overlap:
            raise ConfigError(f"training.unseen_instruments {overlap} are also training instruments")
        return found

    @property
    def model_key(self) -> str:
        """The folder name of the models and searches over the training instruments."""
        return "+".join(i.key for i in self.training_instruments)

    def for_instrument(self, instrument: Instrument | str) -> Settings:
        """These settings for another configured instrument (its daily folders; the model folders stay)."""
        chosen = self.find_instrument(instrument)
        return self.model_copy(update={"instrument": chosen,
                                       "paths": self.paths.for_instrument(chosen, self.paths.model_key)})


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


def _read_yaml(path: Path) -> dict[str, Any]:
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


def _known_keys(schema: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys a (nested) section of `schema` accepts, for a "did you mean" hint."""
    for part in loc:
        field = schema.model_fields.get(str(part))
        kind = getattr(field, "annotation", None)
        if not (isinstance(kind, type) and issubclass(kind, BaseModel)):
            return []
        schema = kind
    return list(schema.model_fields)


def _explain(exc: ValidationError, source: str, schema: type[BaseModel]) -> str:
    """One line per problem: the file, the key (dotted for nested sections), what is wrong."""
    lines = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        key = ".".join(str(p) for p in loc)
        if error["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(loc[-1]), _known_keys(schema, loc[:-1]), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            lines.append(f"{source}: unknown key '{key}'{hint}")
            continue
        value = error.get("input")
        if error["type"] == "value_error":  # our own validators: their sentence as written
            reason = str(error["ctx"]["error"])
        else:
            reason = f"is not valid: {error['msg']}"
        if isinstance(value, Mapping) or not key:  # a whole section: its validator names the keys
            lines.append(f"{source}: {key + ': ' if key else ''}{reason}")
        else:
            lines.append(f"{source}: {key}={value!r} {reason}")
    return "\n".join(lines)


def _validate(schema: type[_Schema], data: Mapping[str, Any], source: str) -> Any:
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, source, schema)) from exc


def _merge(base: Mapping[str, Any], changes: Mapping[str, Any], replace: tuple[str, ...] = ()) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        if key not in replace and isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _profiled(schema: type[_Schema], data: Mapping[str, Any], path: Path, env: Mapping[str, Any]) -> Any:
    """The file (an ML file with `profiles:`) validated, with the QUANTGOD_ML_PROFILE entry merged
    over it. Every profile is validated, used or not, so a typo in one fails today, not on the
    day it is chosen. `env` holds the QUANTGOD_* values that win over the file."""
    source = str(path)
    profiles = data.get("profiles") or {}
    if not isinstance(profiles, Mapping):
        raise ConfigError(f"{source}: profiles must be a mapping of name -> settings")
    base = {k: v for k, v in data.items() if k != "profiles"}
    settings = _validate(schema, _merge(base, env), source)  # the file's own mistakes named first
    merged = {}
    for name, changes in profiles.items():
        if changes is not None and not isinstance(changes, Mapping):
            raise ConfigError(f"{source}: profiles.{name} must be a mapping of settings")
        # a profile's search space replaces the file's whole (it is one choice, not a patch)
        merged[name] = _merge(base, changes or {}, replace=("search_space",))
        _validate(schema, _merge(merged[name], env), f"{source}: profiles.{name}")
    name = os.environ.get(ENV_ML_PROFILE) or None
    if name is not None and name not in profiles and data:  # an absent file: defaults, nothing to name
        raise ConfigError(f"{source}: {ENV_ML_PROFILE}={name} but profiles: has only {sorted(profiles) or 'none'}")
    chosen = name if name in profiles else None
    if chosen:
        settings = _validate(schema, _merge(merged[chosen], env), source)
    settings._profile = chosen
    return settings


def _paths(file: Paths) -> Paths:
    env_root = os.environ.get(ENV_RAW_ROOT)
    paths = Paths(
        raw_root=Path(env_root) if env_root else file.raw_root,
        data_dir=Path(os.environ.get(ENV_DATA_DIR) or file.data_dir),
        logs_dir=Path(os.environ.get(ENV_LOGS_DIR) or file.logs_dir),
    )
    paths._raw_root_from_env = bool(env_root)
    return paths


def _check_search_space(optimization: OptimizationSettings, source: Path) -> None:
    """Every searched name must be a training setting: a misspelt one would be drawn and ignored."""
    unknown = [k for k in optimization.search_space if k not in TrainingSettings.model_fields]
    if unknown:
        raise ConfigError(f"{source}: search_space key(s) {unknown} are not training.yaml settings")


def _env_instrument(first_day: dt.date) -> Instrument | None:
    """QUANTGOD_SYMBOL (`ETHUSDT` or `ETHUSDT_spot`) as the one instrument (None when unset or empty)."""
    value = os.environ.get(ENV_SYMBOL) or None
    if value is None:
        return None
    try:
        return parse_instrument(value).model_copy(update={"first_day": first_day})
    except ValidationError as exc:
        raise ConfigError(f"{ENV_SYMBOL}={value!r} {exc.errors()[0]['ctx']['error']}") from None
    except ValueError as exc:
        raise ConfigError(f"{ENV_SYMBOL}={value!r}: {exc}") from None


def _instruments(etl: _EtlFile) -> tuple[Instrument, ...]:
    listed = etl.instrument_list()
    env = _env_instrument(listed[0].first_day or etl.partitions_start)
    if env is None:
        return listed
    same = next((i for i in listed if i.key == env.key), None)
    return (same or env,)


def _read_etl(folder: Path) -> _EtlFile:
    path = folder / "etl.yaml"
    return _validate(_EtlFile, _read_yaml(path), str(path))


def load_settings(config_folder: str | Path | None = None) -> Settings:
    folder = config_dir(config_folder)
    etl = _read_etl(folder)
    labelling = folder / "labelling.yaml"
    optimization_path, training_path = folder / "optimization.yaml", folder / "training.yaml"
    storage = os.environ.get(ENV_OPTUNA_STORAGE)
    tracking = os.environ.get(ENV_MLFLOW_URI)
    optimization = _profiled(OptimizationSettings, _read_yaml(optimization_path), optimization_path,
                             {"storage": storage} if storage else {})
    _check_search_space(optimization, optimization_path)
    instruments = _instruments(etl)
    training = _profiled(TrainingSettings, _read_yaml(training_path), training_path,
                         {"mlflow": {"tracking_uri": tracking}} if tracking else {})
    if _env_instrument(etl.partitions_start) is not None:
        # the one-instrument shortcut: the model trains on it, whatever training.yaml lists
        profile = training.profile
        training = training.model_copy(update={"instruments": None, "unseen_instruments": ()})
        training._profile = profile
    settings = Settings(
        paths=_paths(etl.paths),
        instruments=instruments,
        instrument=instruments[0],
        etl=EtlSettings.model_validate(etl.model_dump(include=set(EtlSettings.model_fields))),
        labelling=_validate(LabellingSettings, _read_yaml(labelling), str(labelling)),
        optimization=optimization,
        training=training,
        config_dir=folder,
    )
    try:
        model_key = settings.model_key
        settings.unseen_instruments  # noqa: B018 - named now so a wrong entry fails at load
    except ConfigError as exc:
        raise ConfigError(f"{training_path}: {exc}") from None
    # the registry name carries the training instruments too: `quantgod_BTCUSDT_linear`
    mlflow = settings.training.mlflow.model_copy(
        update={"registered_model": f"{settings.training.mlflow.registered_model}_{model_key}"})
    training = settings.training.model_copy(update={"mlflow": mlflow})
    training._profile = settings.training.profile
    return settings.model_copy(update={"paths": settings.paths.for_instrument(instruments[0], model_key),
                                       "training": training})


def partitions_start(config_folder: str | Path | None = None) -> dt.date:
    """Read once at import by `partitions.py`: the partitions object is static. The earliest
    instrument's first day: one date axis serves every instrument."""
    return min(i.first_day or dt.date.max for i in configured_instruments(config_folder))


def configured_instruments(config_folder: str | Path | None = None) -> tuple[Instrument, ...]:
    """Read once when the definitions load: each instrument gets its own daily assets."""
    return _instruments(_read_etl(config_dir(config_folder)))


def automation_settings(config_folder: str | Path | None = None) -> AutomationSettings:
    """Read once when the definitions load: a sensor's default state and interval are static."""
    return _read_etl(config_dir(config_folder)).automation
