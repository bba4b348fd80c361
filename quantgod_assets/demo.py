"""`quantgod demo`: the pipeline end to end on generated days, through Dagster, in under a minute.

Generates a few days into the archive root (QUANTGOD_RAW_ROOT, default data/L2/raw), then runs
the real `dagster asset materialize` CLI twice against the persistent instance in `.dagster_home/`
(so `dagster dev` afterwards shows every run, check and picture):

1. book + labels: `--select 'key:*preprocessed_book or key:*labelled_frame' --partition-range A...B`,
   one run over the days (the replay, its checks, then the labels and their class balance);
2. optimization + model: `--select 'key:optimization or key:model'`, one run, with the `demo` ML
   profile of configs/optimization.yaml and training.yaml (1 trial x 2 walk-forward folds x 2 short epochs
   of a tiny model; the final model, its test block scored once with intervals, the baselines, the
   backtest and the card as in any run). A QUANTGOD_ML_PROFILE already set wins.

The selections match the asset keys with or without an instrument prefix
(`preprocessed_book`, `BTCUSDT_linear/preprocessed_book`). Each stage gets one live line (redrawn
in a terminal, a line at its start and end elsewhere) while the runs' full log goes to
`{logs}/demo/`; a failed run prints the end of that log. Then the debug pictures are drawn into
`{logs}/debug_plots/` and the demo says where to look.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from .launch import dagster_home, forkserver_config, materialize_range
from .secrets import redact_url
from .settings import load_settings

if TYPE_CHECKING:
    from .settings import Settings

# The two Dagster runs: (selection, partitioned, the stages they hold). `key:*name` matches
# `name` and `{instrument}/name`.
BOOK_AND_LABELS = "key:*preprocessed_book or key:*labelled_frame"
OPTIMIZATION_AND_MODEL = "key:optimization or key:model"
RUNS: tuple[tuple[str, bool], ...] = ((BOOK_AND_LABELS, True), (OPTIMIZATION_AND_MODEL, False))
# A step's key ends with its asset's name (`BTCUSDT_linear__preprocessed_book`): the stage it is.
STAGES = {
    "preprocessed_book": ("book", "order-book replay + checks"),
    "labelled_frame": ("labels", "SELL/NEUTRAL/BUY labels + class balance"),
    "optimization": ("optimization", "Optuna search over walk-forward folds"),
    "model": ("model", "walk-forward validation, final model, test block vs baselines, MLflow, card"),
}
DEMO_ML_PROFILE = "demo"
# Generated days: a delta every 5 s (the replay's samples stay valid: etl max_silence_s is 60 s),
# whole days with no gap, a few seconds to write; the price path and the planted signal are the
# generator's at any rate.
DEMO_RATE_MS = 5000
# What the ML steps import, loaded once by the run's forkserver (where there is one) instead of
# once in each step's process; a name that cannot be imported is skipped by the forkserver.
ML_PRELOAD = ("quantgod_assets.ml.search", "quantgod_assets.ml.final", "quantgod_assets.ml.pyfunc",
              "mlflow.pyfunc", "optuna", "torch._dynamo")
LOG_TAIL_LINES = 40

STEP_EVENT = re.compile(r" - (?P<step>[\w.\-/\[\]]+) - (?P<event>STEP_START|STEP_SUCCESS|STEP_FAILURE|STEP_SKIPPED) - ")
STEP_INFO = re.compile(r" - dagster - INFO - \S+ - [0-9a-f\-]{36} - (?P<step>[\w.\-/\[\]]+) - (?P<message>.*)$")


def _say(text: str, stream: TextIO | None = None) -> None:
    print(f"[demo] {text}", file=stream or sys.stdout, flush=True)


def stage_of(step_key: str) -> str | None:
    """The demo stage a Dagster step key belongs to (`BTCUSDT_linear__labelled_frame` -> `labelled_frame`)."""
    for name in STAGES:
        if step_key == name or step_key.endswith(f"__{name}") or step_key.endswith(f"/{name}"):
            return name
    return None


@dataclass
class _Step:
    label: str
    started: float
    note: str = ""


@dataclass
class StageLines:
    """One live line per stage from a Dagster run's log lines (see the module docstring)."""

    total: int = len(STAGES)
    stream: TextIO = field(default_factory=lambda: sys.stdout)
    live: bool | None = None  # None: redraw in place when the stream is a terminal
    done: int = 0
    failed: list[str] = field(default_factory=list)
    _running: dict[str, _Step] = field(default_factory=dict)
    _drawn: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.live is None:
            try:
                self.live = bool(self.stream.isatty()) and os.environ.get("QUANTGOD_PROGRESS") != "lines"
            except (AttributeError, ValueError, OSError):
                self.live = False

    def feed(self, line: str) -> None:
        with self._lock:
            event = STEP_EVENT.search(line)
            if event:
                self._event(event["step"], event["event"])
                return
            info = STEP_INFO.search(line)
            if info and info["step"] in self._running:
                message = info["message"].strip()
                if message and not message.startswith("op '"):
                    self._running[info["step"]].note = message
                    self._draw()

    def tick(self) -> None:
        with self._lock:
            self._draw()

    def _event(self, step: str, event: str) -> None:
        name = stage_of(step)
        if name is None:
            return
        label = STAGES[name][0]
        prefix = step[: -len(name)].rstrip("_/")
        if prefix:
            label = f"{label} {prefix}"
        now = time.perf_counter()
        if event == "STEP_START":
            self._running[step] = _Step(label, now)
            if self.live:
                self._draw()
            else:
                self._line(f"{self.done + 1}/{self.total} {label}: {STAGES[name][1]} ...")
            return
        current = self._running.pop(step, None) or _Step(label, now)
        took = now - current.started
        if event == "STEP_SUCCESS":
            self.done += 1
            mark, what = "ok", f"{took:.1f} s"
        else:
            self.failed.append(label)
            mark, what = ("FAILED" if event == "STEP_FAILURE" else "skipped"), f"after {took:.1f} s"
        note = f"  {current.note}" if current.note else ""
        self._line(f"{self.done}/{self.total} {label} {mark} in {what}{note}" if mark == "ok"
                   else f"{label} {mark} {what}{note}")
        if self.live:
            self._draw()

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r" + " " * self._drawn + "\r")
            self._drawn = 0

    def _line(self, text: str) -> None:
        self._clear()
        self.stream.write(f"[demo] {text}\n")
        self.stream.flush()

    def _draw(self) -> None:
        if not self.live or not self._running:
            return
        step = list(self._running.values())[-1]
        text = f"[demo] {self.done + 1}/{self.total} {step.label}  {time.perf_counter() - step.started:4.0f} s"
        if step.note:
            text += f"  {step.note}"
        width = shutil.get_terminal_size((100, 20)).columns - 1
        text = text[:width]
        self.stream.write("\r" + text + " " * max(self._drawn - len(text), 0))
        self.stream.flush()
        self._drawn = len(text)

    def close(self) -> None:
        with self._lock:
            self._clear()
            self.stream.flush()


def _run(select: str, days: tuple[dt.date, dt.date] | None, lines: StageLines, log: TextIO, *,
         home: Path, env: dict[str, str], overrides: dict | None) -> int:
    """One `dagster asset materialize` run, its log to `log` and the stage lines."""
    preload = () if days else ML_PRELOAD
    stop = threading.Event()

    def on_line(line: str) -> None:
        log.write(line + "\n")
        lines.feed(line)

    def ticker() -> None:
        while not stop.wait(0.5):
            lines.tick()

    log.write(f"\n# dagster asset materialize --select {select!r}"
              + (f" --partition-range {days[0]}...{days[1]}" if days else "") + "\n")
    clock = threading.Thread(target=ticker, daemon=True) if lines.live else None
    if clock is not None:
        clock.start()
    try:
        done = materialize_range(days[0] if days else None, days[1] if days else None, select=select, home=home,
                                 env=env, config_overrides=overrides, on_line=on_line,
                                 run_config=forkserver_config(preload))
    finally:
        stop.set()
        if clock is not None:
            clock.join()
        lines.close()
        log.flush()
    return done.returncode


def warm_stores() -> None:
    """Creates the MLflow tracking store (its SQLite tables: several seconds of migrations) and an
    SQLite Optuna store, as the ML run would, so that run finds them made. The demo runs this in a
    process of its own while the book and labels run."""
    from .ml.tracking import setup_mlflow

    settings = load_settings()
    setup_mlflow(settings.training.mlflow.tracking_uri, settings.training.mlflow.experiment)
    storage = settings.optimization.storage
    if storage.startswith("sqlite:///"):
        import optuna

        optuna.storages.RDBStorage(storage)


def _start_warming(env: dict[str, str], log: TextIO) -> subprocess.Popen | None:
    try:
        return subprocess.Popen([sys.executable, "-c", "from quantgod_assets.demo import warm_stores; warm_stores()"],
                                env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    except OSError:  # the ML run creates the stores itself
        return None


def _tail(path: Path, n: int = LOG_TAIL_LINES) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return text[-n:]


def _import_pictures() -> None:
    with contextlib.suppress(Exception):  # _pictures says why, when it comes to draw
        from . import debug_plots  # noqa: F401


def _pictures(settings: Settings, start: dt.date, end: dt.date) -> tuple[list[Path], str | None]:
    """The debug pictures of the days and the model (`debug_plots.write_debug_plots`), or why none."""
    try:
        from .debug_plots import write_debug_plots
    except ImportError as exc:
        return [], f"not drawn ({exc})"
    try:
        return list(write_debug_plots(settings, start, end)), None
    except Exception as exc:  # the pictures are a nicety: the pipeline's results stand without them
        return [], f"not drawn ({type(exc).__name__}: {exc})"


def run_demo(days: int = 3, start: dt.date = dt.date(2025, 3, 10), seed: int = 7,
             duration_s: int | None = None, stream: TextIO | None = None) -> int:
    from .orderbook.synthetic import generate_days

    out = stream or sys.stdout
    if days < 1:
        _say("--days must be at least 1", out)
        return 2
    settings = load_settings()
    end = start + dt.timedelta(days=days - 1)
    root = settings.paths.raw_root
    instrument = settings.instrument
    started = time.perf_counter()
    _say(f"generating {days} day(s) {start}..{end} of {instrument.symbol} ({instrument.category}) into {root}", out)
    def on_day(path: Path) -> None:
        _say(f"  {path} ({path.stat().st_size / 1e6:.0f} MB, {time.perf_counter() - started:.1f} s)", out)

    generate_days(start, days, root, symbol=instrument.symbol, category=instrument.category, seed=seed,
                  rate_ms=DEMO_RATE_MS, duration_s=duration_s, on_day=on_day)
    # Generated days shorter than a day are mostly gaps: let the gap check pass them.
    overrides = {"etl.yaml": {"checks": {"gap_warn_share": 1.0, "gap_fail_share": 1.0}}} if duration_s else None
    home = dagster_home()
    profile = os.environ.get("QUANTGOD_ML_PROFILE") or DEMO_ML_PROFILE
    log_path = settings.paths.logs_dir / "demo" / f"demo_{dt.datetime.now():%Y%m%d_%H%M%S}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    _say(f"two Dagster runs (book + labels for {start}..{end}; optimization + model, ML profile {profile}); "
         f"their log: {log_path}", out)
    lines = StageLines(stream=out)
    with log_path.open("a", encoding="utf-8") as log:
        log.write("# the ML stores, made while the book and labels run\n")
        log.flush()
        warming = _start_warming({"QUANTGOD_ML_PROFILE": profile}, log)
        try:
            for select, partitioned in RUNS:
                env = {} if partitioned else {"QUANTGOD_ML_PROFILE": profile}
                if not partitioned:
                    if warming is not None:
                        warming.wait()
                    # the pictures' libraries (matplotlib) load here while the ML run works
                    threading.Thread(target=_import_pictures, daemon=True).start()
                code = _run(select, (start, end) if partitioned else None, lines, log, home=home, env=env,
                            overrides=overrides)
                if code != 0:
                    _say(f"dagster asset materialize --select '{select}' failed (exit {code}); "
                         f"the end of its log ({log_path}):", out)
                    for line in _tail(log_path):
                        out.write(f"    {line}\n")
                    out.flush()
                    return code
        finally:
            if warming is not None:
                warming.wait()
    pictures, why_not = _pictures(settings, start, end)
    took = time.perf_counter() - started
    _say(f"done in {took:.0f} s ({days} day(s), {lines.done} stages through Dagster). Where to look:", out)
    _where_to_look(settings, home, pictures, why_not, out)
    return 0


def _where_to_look(settings: Settings, home: Path, pictures: Sequence[Path], why_not: str | None,
                   out: TextIO) -> None:
    paths = settings.paths
    model = paths.model_path
    card = model.with_suffix(".md")
    ui = "dagster dev -w workspace.yaml" if Path("workspace.yaml").is_file() else \
        "dagster dev -m quantgod_assets.definitions"
    say = [
        f"  UI:       DAGSTER_HOME={home} {ui}   (then http://127.0.0.1:3000: runs, checks, pictures)",
        f"  MLflow:   mlflow ui --backend-store-uri {redact_url(settings.training.mlflow.tracking_uri)}",
        f"  card:     {card}  (walk-forward, test block with intervals, baselines, verdict)",
        f"  model:    {model}" + (f"  (champion: {paths.champion_path})" if paths.champion_path.is_file()
                                   else "  (not promoted: it did not beat the baselines on validation)"),
        f"  data:     {paths.preprocessed_dir}/  {paths.labelled_dir}/",
        f"  Optuna:   optuna-dashboard {redact_url(settings.optimization.storage)}",
        f"  logs:     {paths.logs_dir}/",
    ]
    if pictures:
        say.append(f"  pictures: {paths.logs_dir / 'debug_plots'}/")
        say.extend(f"            {path}" for path in pictures)
    else:
        say.append(f"  pictures: {why_not}; `quantgod plots --help` draws them")
    for line in say:
        _say(line, out)


if __name__ == "__main__":
    sys.exit(run_demo())
