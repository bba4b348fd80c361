"""Runs one daily stage over many days and keeps the run's log in order.

The stage's per-day function (`work`) returns a `DayOutcome` and never raises for a bad day; it runs
in-process for one day or one worker, else on a process pool (`day_pool.run_days`). A worker that
dies (the OOM killer, a crash in native code) breaks the pool: the days it held unfinished are
retried, each in a process of its own (a WARNING names them), so only a day that kills its worker
again fails, and never the others. Workers do not write the log: each outcome carries its lines and
the parent writes them as the day finishes.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Callable, Sequence

from ..day_pool import WorkerDied, run_days
from .outcome import DayOutcome, describe_failures, short_reason

__all__ = ["day_span", "run_stage", "workers_note"]


def write_lines(log: logging.Logger, outcome: DayOutcome) -> None:
    for level, line in outcome.lines:
        log.log(level, line)


def run_stage(
    days: Sequence[dt.date],
    work: Callable[[dt.date], DayOutcome],
    *,
    workers: int,
    log: logging.Logger,
    summarize: Callable[[list[DayOutcome]], list[str]] | None = None,
) -> list[DayOutcome]:
    """`work(day)` for every day, outcomes in `days` order; closes the log with `Done:` and the failures.

    `work` must pickle (a module-level function or a `functools.partial` of one) when `workers` > 1.
    `summarize` gives the stage's own closing lines (written before `Done:`).
    """
    started = time.perf_counter()
    outcomes: dict[dt.date, DayOutcome] = {}

    def done(day: dt.date, outcome: DayOutcome | None, exc: BaseException | None) -> None:
        if exc is not None or outcome is None:  # `work` catches everything: this worker died
            outcome = DayOutcome(day).fail(_worker_failure(exc), str(day))
        outcomes[day] = outcome
        write_lines(log, outcome)

    def retrying(lost: list[dt.date]) -> None:
        log.warning(f"A worker process died (killed, out of memory?) and broke the pool: {len(lost)} day(s) "
                    f"retried, each in a process of its own: {', '.join(str(d) for d in lost)}")

    run_days(work, days, workers, done, on_retry=retrying)
    ordered = [outcomes[d] for d in days]
    for line in summarize(ordered) if summarize else []:
        log.info(line)
    failed = [o for o in ordered if o.reason]
    log.info(f"Done: {len(ordered) - len(failed)} of {len(ordered)} day(s) succeeded "
             f"in {time.perf_counter() - started:.1f} s")
    if failed:
        log.error(describe_failures(ordered))
    return ordered


def _worker_failure(exc: BaseException | None) -> str:
    if isinstance(exc, WorkerDied):
        return str(exc)
    return f"worker failed: {short_reason(exc or RuntimeError('no result'))}"


def day_span(days: Sequence[dt.date]) -> str:
    """`2025-03-14`, or `2025-03-10...2025-03-16` for a range (Dagster's own spelling)."""
    return f"{days[0]}" if len(days) == 1 else f"{days[0]}...{days[-1]}"


def workers_note(workers: int) -> str:
    return f"{workers} worker(s) of {os.cpu_count()} core(s)"
