"""Plain builders shared by the test modules: dates, a QuantGod environment in temp folders,
preprocessed day frames from a price path, Bybit messages, a planted-signal dataset, a local
archive server, and the one in-process `materialize` helper.

Test modules import from here, never from each other; the pytest fixtures stay in conftest.py.
Heavy libraries (dagster, torch) are imported only by the builders that need them, so a pure
unit test module that imports this file stays cheap to collect.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.server
import io
import itertools
import json
import os
import shutil
import socket
import struct
import threading
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from quantgod_assets.orderbook.reference import ReferenceResult
from quantgod_assets.orderbook.replay import DayReplay
from quantgod_assets.orderbook.sampling import minute_frame
from quantgod_assets.orderbook.schema import (
    MINUTES_PER_DAY,
    STAT_COLUMNS,
    book_columns,
    book_schema,
    level_columns,
)

if TYPE_CHECKING:
    import dagster as dg

REPO = Path(__file__).resolve().parent.parent
SHORT_DAY_S = 600  # ten minutes of messages: the rest of the day is a gap (fast, and a known gap share)
DAY1, DAY2, BAD_DAY = dt.date(2025, 3, 14), dt.date(2025, 3, 15), dt.date(2025, 3, 16)
TICK = 0.1


# ---------------------------------------------------------------------------------------------
# A QuantGod environment in temp folders


@dataclass
class QuantGodEnv:
    root: Path
    raw_root: Path
    data_dir: Path
    logs_dir: Path
    config_dir: Path
    dagster_home: Path

    def env(self) -> dict[str, str]:
        return {
            "QUANTGOD_RAW_ROOT": str(self.raw_root),
            "QUANTGOD_DATA_DIR": str(self.data_dir),
            "QUANTGOD_LOGS_DIR": str(self.logs_dir),
            "QUANTGOD_CONFIG_DIR": str(self.config_dir),
            "QUANTGOD_SYMBOL": "BTCUSDT",
            "DAGSTER_HOME": str(self.dagster_home),
        }

    def set_etl(self, **changes: object) -> None:
        """Rewrites the temp etl.yaml with `key: value` lines changed (top-level or under checks:)."""
        import yaml

        path = self.config_dir / "etl.yaml"
        data = yaml.safe_load(path.read_text())
        for key, value in changes.items():
            if key in ("gap_warn_share", "gap_fail_share"):
                data.setdefault("checks", {})[key] = value
            elif key.startswith("download_"):
                data.setdefault("download", {})[key.removeprefix("download_")] = value
            else:
                data[key] = value
        path.write_text(yaml.safe_dump(data))

    def set_profile(self, name: str, **changes: object) -> None:
        """Rewrites the temp training.yaml with `profiles.{name}` entries changed."""
        import yaml

        path = self.config_dir / "training.yaml"
        data = yaml.safe_load(path.read_text())
        data["profiles"][name].update(changes)
        path.write_text(yaml.safe_dump(data, sort_keys=False))

    def preprocessed(self, day: dt.date, instrument: str = "linear/BTCUSDT") -> Path:
        return self.data_dir / "L2" / instrument / "pre_processed" / f"{day.isoformat()}.parquet"

    def preprocessed_dir(self, instrument: str = "linear/BTCUSDT") -> Path:
        return self.data_dir / "L2" / instrument / "pre_processed"

    def labelled_dir(self, instrument: str = "linear/BTCUSDT") -> Path:
        return self.data_dir / "L2" / instrument / "labelled"


def make_env(base: Path, archives: dict[dt.date, Path], *, lenient_gaps: bool = True) -> QuantGodEnv:
    """Temp raw root holding copies of `archives`, the repo's configs, a DAGSTER_HOME."""
    env = QuantGodEnv(
        root=base,
        raw_root=base / "mnt" / "bybit",
        data_dir=base / "data",
        logs_dir=base / "logs",
        config_dir=base / "configs",
        dagster_home=base / "dagster_home",
    )
    for day, path in archives.items():
        target = env.raw_root / f"{day.year}" / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    shutil.copytree(REPO / "configs", env.config_dir)
    env.dagster_home.mkdir()
    shutil.copyfile(REPO / "configs" / "dagster.yaml", env.dagster_home / "dagster.yaml")
    if lenient_gaps:
        # a short generated day is ~99 % gap: let it pass so the other behaviour can be seen
        env.set_etl(gap_warn_share=0.995, gap_fail_share=1.0)
    return env


# ---------------------------------------------------------------------------------------------
# In-process Dagster


def materialize(
    assets: Sequence[Any],
    *,
    instance: dg.DagsterInstance | None = None,
    partition: dt.date | str | tuple[dt.date | str, dt.date | str] | None = None,
    resources: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    raise_on_error: bool = False,
    **kwargs: Any,
) -> dg.ExecuteInProcessResult:
    """`dagster.materialize` with the project's resources, failures returned (not raised).

    `partition`: one day (date or ISO string), a `(first, last)` day range run as one
    single-run backfill (the range tags), or None for unpartitioned assets. `instance` None is
    an ephemeral instance; `resources` None is `quantgod_assets.resources.resources()`."""
    import dagster as dg

    from quantgod_assets.resources import resources as project_resources

    def iso(day: dt.date | str) -> str:
        return day if isinstance(day, str) else day.isoformat()

    tags = dict(tags or {})
    partition_key = None
    if isinstance(partition, tuple):
        first, last = partition
        tags["dagster/asset_partition_range_start"] = iso(first)
        tags["dagster/asset_partition_range_end"] = iso(last)
    elif partition is not None:
        partition_key = iso(partition)
    return dg.materialize(
        list(assets),
        partition_key=partition_key,
        resources=project_resources() if resources is None else resources,
        instance=instance,
        tags=tags or None,
        raise_on_error=raise_on_error,
        **kwargs,
    )


# ---------------------------------------------------------------------------------------------
# Preprocessed day frames (the labelling and ML inputs)


def make_day_frame(
    day: dt.date | str,
    prices: np.ndarray | Iterable[float] | None = None,
    *,
    filled_levels: int = 10,
    invalid_minutes: Iterable[int] = (),
    seed: int = 0,
) -> pl.DataFrame:
    """A preprocessed day with the exact `book_schema()`: `micro_price` = `mid_close` = the price
    path (1440 values; a gentle random walk by default), `filled_levels` levels on each side, the
    deeper levels null; `invalid_minutes` have null book columns and micro price, as when the close
    sample was invalid."""
    day = dt.date.fromisoformat(day) if isinstance(day, str) else day
    rng = np.random.default_rng(seed)
    if prices is None:
        prices = 30_000 * np.exp(np.cumsum(rng.normal(0, 5e-4, MINUTES_PER_DAY)))
    prices = np.asarray(list(prices) if not isinstance(prices, np.ndarray) else prices, dtype=np.float64)
    n = prices.size
    start = int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp() * 1000)
    spread = np.full(n, TICK)
    columns: dict[str, np.ndarray] = {"ts": np.arange(n, dtype=np.int64) * 60_000 + start}
    null = np.full(n, np.nan)
    bid_total = np.zeros(n)
    ask_total = np.zeros(n)
    for i in range(200):
        if i < filled_levels:
            bid_sz = rng.uniform(0.1, 5.0, n)
            ask_sz = rng.uniform(0.1, 5.0, n)
            columns[f"bid_px_{i}"] = prices - spread / 2 - i * TICK
            columns[f"bid_sz_{i}"] = bid_sz
            columns[f"ask_px_{i}"] = prices + spread / 2 + i * TICK
            columns[f"ask_sz_{i}"] = ask_sz
            bid_total += bid_sz
            ask_total += ask_sz
        else:
            for field in ("bid_px", "bid_sz", "ask_px", "ask_sz"):
                columns[f"{field}_{i}"] = null
    imbalance = (bid_total - ask_total) / (bid_total + ask_total)
    columns.update(
        mid_open=prices, mid_high=prices, mid_low=prices, mid_close=prices,
        micro_price=prices.copy(), micro_price_mean=prices, spread=spread, spread_mean=spread,
        imbalance_1=imbalance, imbalance_5=imbalance, imbalance_20=imbalance, imbalance_200=imbalance,
        n_msgs=np.full(n, 100, dtype=np.int64), valid_seconds=np.full(n, 60, dtype=np.int16),
    )
    bad = np.zeros(n, dtype=bool)
    bad[list(invalid_minutes)] = True
    for name in [*level_columns(), "micro_price", "spread", "imbalance_1", "imbalance_5",
                 "imbalance_20", "imbalance_200"]:
        columns[name] = np.where(bad, np.nan, columns[name])
    columns["valid_seconds"] = np.where(bad, 0, columns["valid_seconds"]).astype(np.int16)
    schema = book_schema()
    series = [pl.Series("ts", columns["ts"]).cast(pl.Datetime("ms", "UTC"))]
    for name in book_columns()[1:]:
        series.append(pl.Series(name, columns[name], dtype=schema[name], nan_to_null=schema[name] == pl.Float64()))
    return pl.DataFrame(series)


def write_pre_days(pre_dir: Path, days: Iterable[dt.date], **kwargs) -> list[Path]:
    """Writes `make_day_frame` days as `{pre_dir}/{YYYY-MM-DD}.parquet`; a different seed per day."""
    pre_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, day in enumerate(days):
        path = pre_dir / f"{day.isoformat()}.parquet"
        make_day_frame(day, seed=k, **kwargs).write_parquet(path)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------
# Bybit order-book messages


def msg(kind, ts, bids=(), asks=(), u=1, key_order=("topic", "ts", "type", "data", "cts")):
    """One Bybit `orderbook.200.BTCUSDT` line: `kind` snapshot/delta, price/size string pairs."""
    fields = {
        "topic": "orderbook.200.BTCUSDT",
        "ts": ts,
        "type": kind,
        "data": {"s": "BTCUSDT", "b": [list(map(str, b)) for b in bids],
                 "a": [list(map(str, a)) for a in asks], "u": u, "seq": u * 7},
        "cts": ts - 3,
    }
    return json.dumps({k: fields[k] for k in key_order}, separators=(",", ":"))


# ---------------------------------------------------------------------------------------------
# A local archive server (download tests)


class ArchiveServer(http.server.ThreadingHTTPServer):
    """Serves `files[path]` bytes on 127.0.0.1; `drop_after[path]` cuts the connection after that
    many bytes; `drip[path]` sends one byte every that many seconds (a stalled-but-alive server);
    `announce[path]` is the Content-Length sent instead of the true one (None: no Content-Length,
    the body ends when the connection closes); `requests` records the paths asked for.

    `with ArchiveServer.running() as server:` serves on a daemon thread until the block ends."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _ArchiveHandler)
        self.files: dict[str, bytes] = {}
        self.drop_after: dict[str, int] = {}  # path -> bytes sent before the connection is cut
        self.drip: dict[str, float] = {}  # path -> seconds between single bytes
        self.announce: dict[str, int | None] = {}  # path -> Content-Length sent (None: none)
        self.requests: list[str] = []
        self.stopping = threading.Event()  # ends a drip at shutdown

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/orderbook/linear"

    @classmethod
    @contextlib.contextmanager
    def running(cls) -> Iterator[ArchiveServer]:
        server = cls()
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            yield server
        finally:
            server.stopping.set()
            server.shutdown()
            server.server_close()


class _ArchiveHandler(http.server.BaseHTTPRequestHandler):
    server: ArchiveServer

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        data = self.server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        length = self.server.announce.get(self.path, len(data))
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        try:
            self._body(data)
        except OSError:  # the client gave up (a deadline, a size cap): nothing more to send
            self.close_connection = True

    def _body(self, data: bytes) -> None:
        pause = self.server.drip.get(self.path)
        if pause is not None:
            for k in range(len(data)):
                if self.server.stopping.wait(pause):
                    break
                self.wfile.write(data[k : k + 1])
                self.wfile.flush()
            self.close_connection = True
            return
        cut = self.server.drop_after.get(self.path)
        if cut is None:
            self.wfile.write(data)
            return
        self.wfile.write(data[:cut])
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)


def flip_member_bytes(data: bytes, count: int = 64) -> bytes:
    """A ZIP's bytes with `count` bytes in the middle of its (one) member's compressed data
    inverted: the directory and headers intact (the ZIP opens), the member corrupt."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        [member] = archive.infolist()
    name_len, extra_len = struct.unpack_from("<HH", data, member.header_offset + 26)
    start = member.header_offset + 30 + name_len + extra_len
    middle = start + member.compress_size // 2
    count = min(count, member.compress_size // 4)
    out = bytearray(data)
    for k in range(middle, middle + count):
        out[k] ^= 0xFF
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# A planted-signal dataset and an Optuna search space (training tests)


def planted_signal(n_rows=2400, n_features=4, seq_len=16, lag=5, seed=0):
    """Features are noise; the label of row t is BUY / SELL when feature 0 at t plus feature 1
    at t-lag is clearly positive / negative, else NEUTRAL (the majority)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_rows, n_features)).astype(np.float32)
    score = x[:, 0].copy()
    score[lag:] += x[:-lag, 1]
    y = np.full(n_rows, 1, dtype=np.int64)
    y[score > 1.2] = 2
    y[score < -1.2] = 0
    return x, y


def split_windows(x, y, seq_len, fractions=(0.6, 0.2, 0.2)):
    """Train / val / test window datasets over contiguous row blocks (no window crosses a block)."""
    windows = _tensor_windows_class()
    n = len(y)
    bounds = np.cumsum([0] + [int(f * n) for f in fractions])
    bounds[-1] = n
    out = []
    for a, b in itertools.pairwise(bounds):
        ends = np.arange(a + seq_len - 1, b)
        out.append(windows(x, y, ends, seq_len))
    return out


SPACE = {
    "arch": {"type": "categorical", "choices": ["tcn_lstm", "transformer"]},
    "tcn_channels": {"type": "categorical", "choices": [8, 16], "when": {"arch": "tcn_lstm"}},
    "lstm_hidden": {"type": "categorical", "choices": [8, 16], "when": {"arch": "tcn_lstm"}},
    "d_model": {"type": "categorical", "choices": [8, 16], "when": {"arch": "transformer"}},
    "n_heads": {"type": "categorical", "choices": [2], "when": {"arch": "transformer"}},
    "n_layers": {"type": "int", "low": 1, "high": 2, "when": {"arch": "transformer"}},
    "seq_len": {"type": "categorical", "choices": [8, 16]},
    "lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.2},
    "batch_size": {"type": "fixed", "value": 128},
}


def make_datasets(params):
    """The `run_study` dataset factory: planted-signal train / val windows and the feature count."""
    x, y = planted_signal(n_rows=900, seq_len=params["seq_len"])
    train, val, _test = split_windows(x, y, params["seq_len"])
    return train, val, x.shape[1]


_TENSOR_WINDOWS: type | None = None


def _tensor_windows_class() -> type:
    """`TensorWindows`, a torch Dataset, defined on first use so torch loads only for ML tests."""
    global _TENSOR_WINDOWS
    if _TENSOR_WINDOWS is not None:
        return _TENSOR_WINDOWS
    import torch

    class TensorWindows(torch.utils.data.Dataset):
        """Windows over one feature matrix, shaped like `SequenceDataset`: item i is
        (features[e-seq_len+1 : e+1] float32 [seq_len, F], targets[e] int64), e = ends[i]."""

        def __init__(self, features, targets, ends, seq_len, scaler=None):
            self.features = np.ascontiguousarray(features, dtype=np.float32)
            self.targets = np.asarray(targets, dtype=np.int64)
            self.ends = np.asarray(ends, dtype=np.int64)
            self.seq_len = int(seq_len)
            self.scaler = scaler

        def __len__(self):
            return len(self.ends)

        def __getitem__(self, i):
            e = int(self.ends[i])
            window = self.features[e - self.seq_len + 1 : e + 1]
            if self.scaler is not None:
                window = ((window - self.scaler.mean) / self.scaler.std).astype(np.float32)
            return torch.from_numpy(np.array(window)), torch.tensor(int(self.targets[e]))

    TensorWindows.__module__ = __name__
    _TENSOR_WINDOWS = TensorWindows
    return TensorWindows


def __getattr__(name: str) -> Any:
    # `from quantgod_assets_tests.builders import TensorWindows` builds the class (and loads torch) then
    if name == "TensorWindows":
        return _tensor_windows_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------
# The engine against the reference replay (orderbook tests)

ENGINE_DAY = dt.date(2024, 3, 5)
ENGINE_T0 = int(dt.datetime(2024, 3, 5, tzinfo=dt.UTC).timestamp()) * 1000


def _captured_array(ref: ReferenceResult, out_levels: int) -> np.ndarray:
    out = np.full((len(ref.captured), 4, out_levels), np.nan)
    for k, (bids, asks) in enumerate(ref.captured):
        for i, (px, sz) in enumerate(bids):
            out[k, 0, i] = px
            out[k, 1, i] = sz
        for i, (px, sz) in enumerate(asks):
            out[k, 2, i] = px
            out[k, 3, i] = sz
    return out


def _first_difference(expected: np.ndarray, got: np.ndarray) -> tuple[int, ...]:
    same = (expected == got) | (np.isnan(expected) & np.isnan(got))
    return tuple(int(i) for i in np.argwhere(~same)[0])


def assert_engine_matches(ref: ReferenceResult, eng: DayReplay, out_levels: int, context: str = "") -> None:
    counts = dict(eng.counts)
    assert counts.pop("book_overflow_levels", 0) == 0, context
    assert counts == ref.counts, f"counts differ {context}\nexpected {ref.counts}\ngot      {counts}"
    # the book against the snapshots: the first disagreeing level, its values bit for bit
    first = eng.first_disagreement
    got_first = None if first is None else {k: v for k, v in first.as_dict().items() if k != "time"}
    assert got_first == ref.first_disagreement, f"first snapshot disagreement {context}"

    if ref.captured:
        expected = _captured_array(ref, out_levels)
        got = eng.captured
        assert got is not None and got.shape == expected.shape, context
        if not np.array_equal(expected, got, equal_nan=True):
            k, f, i = _first_difference(expected, got)
            field = ("bid_px", "bid_sz", "ask_px", "ask_sz")[f]
            raise AssertionError(
                f"captured sample {k} {field}_{i}: expected {expected[k, f, i]!r}, got {got[k, f, i]!r} {context}"
            )

    valid = np.array(ref.second_valid, dtype=bool)
    if not np.array_equal(valid, eng.second_valid):
        k = int(np.argwhere(valid != eng.second_valid)[0][0])
        raise AssertionError(f"second_valid[{k}]: expected {valid[k]}, got {eng.second_valid[k]} {context}")
    mid = np.array(ref.second_mid, dtype=np.float64)
    if not np.array_equal(mid, eng.second_mid, equal_nan=True):
        (k,) = _first_difference(mid, eng.second_mid)
        raise AssertionError(f"second_mid[{k}]: expected {mid[k]!r}, got {eng.second_mid[k]!r} {context}")

    frame = minute_frame(eng)
    columns = [*level_columns(out_levels), *STAT_COLUMNS, "n_msgs", "valid_seconds"]
    assert frame.columns == ["ts", *columns], context
    assert frame.height == 1440
    got = frame.select(columns).to_numpy().astype(np.float64)  # null -> NaN
    expected = np.array([[row[c] for c in columns] for row in ref.minute_rows], dtype=np.float64)
    if not np.array_equal(expected, got, equal_nan=True):
        m, c = _first_difference(expected, got)
        raise AssertionError(
            f"minute {m} {columns[c]}: expected {expected[m, c]!r}, got {got[m, c]!r} {context}"
        )
    # the frame holds null, never NaN
    floats = frame.select(columns[:-2])
    assert sum(floats.select([pl.col(c).is_nan().sum() for c in floats.columns]).row(0)) == 0


def day_start_ms(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()) * 1000


class DictBook:
    """The obviously correct replay: a dict of Decimal per side."""

    def __init__(self) -> None:
        self.bids: dict[Decimal, Decimal] = {}
        self.asks: dict[Decimal, Decimal] = {}

    def apply(self, msg: dict) -> None:
        data = msg["data"]
        if msg["type"] == "snapshot":
            self.bids.clear()
            self.asks.clear()
        for key, book in (("b", self.bids), ("a", self.asks)):
            for px, sz in data[key]:
                if Decimal(sz) == 0:
                    book.pop(Decimal(px), None)
                else:
                    book[Decimal(px)] = Decimal(sz)

    def best(self) -> tuple[Decimal, Decimal]:
        return max(self.bids), min(self.asks)


class RunningDaemon:
    """A `dagster-daemon run` subprocess on the instance of `env["DAGSTER_HOME"]`; see `running_daemon`."""

    def __init__(self, process: Any, log: Path):
        self.process, self.log = process, log

    def wait_for(self, condition: Any, what: str, timeout_s: float = 240) -> None:
        """Polls `condition()` until it holds; fails with the daemon's log when it does not in time."""
        import time

        import pytest

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return
            if self.process.poll() is not None:
                break
            time.sleep(2)
        tail = self.log.read_text(encoding="utf-8", errors="replace")[-4000:]
        pytest.fail(f"{what} did not happen within {timeout_s:.0f} s; the daemon's log ends:\n{tail}")


@contextlib.contextmanager
def running_daemon(folder: Path, env: Mapping[str, str]) -> Iterator[RunningDaemon]:
    """The real Dagster daemon over the repository's workspace (copied into `folder`, its log
    `folder/daemon.log`), with `env`; terminated (killed if it lingers) on exit."""
    import subprocess
    import sys

    shutil.copyfile(REPO / "workspace.yaml", folder / "workspace.yaml")
    log = folder / "daemon.log"
    with log.open("w", encoding="utf-8") as out:
        command = [sys.executable, "-m", "dagster._daemon", "run", "-w", str(folder / "workspace.yaml")]
        process = subprocess.Popen(command, cwd=folder, env={**env, "PYTHONPATH": str(REPO)}, stdout=out,
                                   stderr=subprocess.STDOUT)
    try:
        yield RunningDaemon(process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def run_toy_workers(storage: str, folder: Path, n_trials: int, n_workers: int = 2) -> list[int]:
    """`n_workers` toy Optuna workers (`python -m quantgod_assets.ml.worker --objective toy`) filling
    the study `shared` at `storage` to `n_trials`, side by side; their process ids once all
    finished with exit 0 (asserted, with their output)."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "quantgod_assets.ml.worker", "--objective", "toy", "--storage", storage,
               "--study", "shared", "--n-trials", str(n_trials), "--sleep", "0.3"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    workers = [subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for _ in range(n_workers)]
    outputs = [w.communicate(timeout=180)[0] for w in workers]
    assert [w.returncode for w in workers] == [0] * n_workers, outputs
    return [w.pid for w in workers]
