"""Optuna trial workers: several processes (on one machine or many) filling one study.

Every worker opens the same study (`tune.make_study`: the storage of optimization.yaml /
`QUANTGOD_OPTUNA_STORAGE`, a PostgreSQL URL across machines or a journal file `*.log` on one
machine or a shared POSIX volume) and runs trials until the study holds `--n-trials` finished ones
(COMPLETE + PRUNED + FAIL, RUNNING ones counted too so that workers do not overshoot; a race can
still add at most one trial per extra worker). Optuna hands each worker distinct trial numbers.

    # 4 workers on this machine, the real objective (configs/optimization.yaml, the labelled days)
    python -m quantgod_assets.ml.worker --workers 4
    # one worker per pod / machine, against PostgreSQL
    QUANTGOD_OPTUNA_STORAGE=postgresql://optuna:...@db/optuna python -m quantgod_assets.ml.worker
    # the storage alone, with a cheap objective (a smoke test of the shared study; seconds)
    python -m quantgod_assets.ml.worker --objective toy --storage /tmp/s.log --study smoke --n-trials 8 --workers 2

Objectives:
    quantgod  the `optimization` asset's own search (`search.run_optimization`), one trial per
              call; best_params.json is rewritten after every trial, so it always holds the best so far.
    toy       a quadratic in two parameters: no data, no torch.

Each toy trial records the worker's `worker_pid` and `worker_host` in its user attributes. The
storage URL's password never shows: the lines it prints are masked (`secrets.redact_text`) and an
error quoting it is re-raised masked (`secrets.redacted_errors`). This module does not import dagster.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..secrets import redact_text, redacted_errors

__all__ = ["count_taken", "main", "run_quantgod_worker", "run_toy_worker", "spawn_workers", "toy_objective"]

def _taken_states() -> tuple[Any, ...]:
    import optuna

    s = optuna.trial.TrialState
    return (s.COMPLETE, s.PRUNED, s.FAIL, s.RUNNING)


def count_taken(study: Any) -> int:
    """Trials finished or running: what counts against the study's budget."""
    return len(study.get_trials(deepcopy=False, states=_taken_states()))


def toy_objective(trial: Any, sleep_s: float = 0.0) -> float:
    """(x - 2)^2 + (y + 1)^2 minimized as its negative (the study maximizes), tagged with the worker."""
    trial.set_user_attr("worker_pid", os.getpid())
    trial.set_user_attr("worker_host", socket.gethostname())
    x = trial.suggest_float("x", -10.0, 10.0)
    y = trial.suggest_float("y", -10.0, 10.0)
    if sleep_s:
        time.sleep(sleep_s)  # stands in for training, so that workers overlap
    return -((x - 2.0) ** 2 + (y + 1.0) ** 2)


def run_toy_worker(storage: str, study_name: str, n_trials: int, seed: int | None = None,
                   sleep_s: float = 0.0) -> int:
    """Runs toy trials until the study's budget is taken; returns how many this worker completed.

    Exact budget: the storage numbers trials in creation order, so a trial numbered `n_trials` or
    above lost a race for the last slot; it is closed as PRUNED (user attr `over_budget`) unrun.
    """
    with redacted_errors(storage):
        return _run_toy_worker(storage, study_name, n_trials, seed, sleep_s)


def _run_toy_worker(storage: str, study_name: str, n_trials: int, seed: int | None, sleep_s: float) -> int:
    import optuna

    from .tune import make_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # a seed per process: the same seed in every worker would propose the same points
    seed = os.getpid() if seed is None else seed
    study = make_study(storage, study_name, seed=seed, sampler_startup_trials=max(n_trials, 1))
    ran = 0
    while count_taken(study) < n_trials:
        trial = study.ask()
        if trial.number >= n_trials:
            trial.set_user_attr("over_budget", True)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            break
        try:
            value = toy_objective(trial, sleep_s)
        except Exception:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        study.tell(trial, value)
        ran += 1
    return ran


def run_quantgod_worker(n_trials: int | None = None, storage: str | None = None, study_name: str | None = None,
                        mlflow: bool = True, say: Callable[[str], Any] = print) -> int:
    """Runs trials of the real search (the `optimization` asset's study) until its budget is taken.

    One `run_optimization` per trial: it resumes the shared study, runs the one missing trial,
    and rewrites best_params.json. Returns how many calls this worker made.
    """
    from ..settings import load_settings
    from .data import training_ranges
    from .lines import lines_to
    from .search import run_optimization
    from .search import study_name as search_study_name
    from .tune import open_study

    settings = load_settings()
    changes: dict[str, Any] = {"storage": storage, "study_name": study_name, "n_trials": n_trials}
    opt = settings.optimization.model_copy(update={k: v for k, v in changes.items() if v})
    settings = settings.model_copy(update={"optimization": opt})
    name = search_study_name(settings, training_ranges(settings))  # the study the `optimization` asset fills
    study = open_study(opt, name)  # an error quoting the storage's password comes masked
    me = f"worker {socket.gethostname()}:{os.getpid()}"
    calls = 0
    with lines_to(_SayHandler(say, f"{me} | ")):
        while True:
            finished = len(study.get_trials(deepcopy=False, states=_taken_states()[:3]))
            if count_taken(study) >= opt.n_trials:
                say(f"{me}: study '{name}' holds {finished} finished trials of {opt.n_trials}: done")
                return calls
            one_more = settings.model_copy(update={"optimization": opt.model_copy(update={"n_trials": 1})})
            try:
                run_optimization(one_more, mlflow=mlflow)
            except RuntimeError as exc:  # "no completed trial" yet: the first trials were pruned
                say(f"{me}: {redact_text(str(exc))}")
            calls += 1


class _SayHandler(logging.Handler):
    """The ML lines, prefixed with the worker's name, through `say` (print by default)."""

    def __init__(self, say: Callable[[str], Any], prefix: str):
        super().__init__()
        self.say, self.prefix = say, prefix

    def emit(self, record: logging.LogRecord) -> None:
        self.say(self.prefix + redact_text(record.getMessage()))


def spawn_workers(n: int, argv: Sequence[str]) -> int:
    """Starts `n` copies of this command (each with --workers 1) and waits; non-zero if one failed."""
    base = [sys.executable, "-m", "quantgod_assets.ml.worker", *argv, "--workers", "1"]
    procs = [subprocess.Popen(base) for _ in range(n)]
    codes = [p.wait() for p in procs]
    return max(codes, key=abs)


def _strip_workers(argv: Sequence[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--workers":
            skip = True
            continue
        if arg.startswith("--workers="):
            continue
        out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m quantgod_assets.ml.worker", description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=1, help="processes to start on this machine (default 1)")
    p.add_argument("--objective", choices=("quantgod", "toy"), default="quantgod")
    p.add_argument("--storage", help="Optuna storage URL or journal file (default: optimization.yaml / "
                                     "QUANTGOD_OPTUNA_STORAGE)")
    p.add_argument("--study", help="study name (default: optimization.yaml study_name, else the `optimization` "
                                   "asset's: labels, profile, data range, search hash)")
    p.add_argument("--n-trials", type=int, help="the study's total budget (default: optimization.yaml n_trials)")
    p.add_argument("--no-mlflow", action="store_true", help="quantgod: do not log trials to MLflow")
    p.add_argument("--sleep", type=float, default=0.0, help="toy: seconds each trial sleeps")
    p.add_argument("--seed", type=int, help="toy: sampler seed (default: the process id)")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error("--workers must be >= 1")
    if args.workers > 1:
        return spawn_workers(args.workers, _strip_workers(argv))
    if args.objective == "toy":
        if not (args.storage and args.study and args.n_trials):
            p.error("--objective toy needs --storage, --study and --n-trials")
        ran = run_toy_worker(args.storage, args.study, args.n_trials, args.seed, args.sleep)
        print(f"worker {os.getpid()}: ran {ran} trial(s) of study '{args.study}'", flush=True)
        return 0
    run_quantgod_worker(args.n_trials, args.storage, args.study, mlflow=not args.no_mlflow,
                        say=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
