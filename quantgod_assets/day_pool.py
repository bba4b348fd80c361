"""Running one function per day: in-process for one day, else on a pool of worker processes.

Plain Python (no dagster): the workers import only what `fn` needs.
"""

from __future__ import annotations

import multiprocessing
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

Day = TypeVar("Day")


def pool_context() -> multiprocessing.context.ForkServerContext | multiprocessing.context.SpawnContext:
    # fork after threads (Dagster's, polars') can deadlock; forkserver starts clean workers cheaply.
    if sys.platform != "win32" and "forkserver" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("forkserver")
    return multiprocessing.get_context("spawn")


def run_days(
    fn: Callable[[Day], Any],
    days: Sequence[Day],
    workers: int,
    on_result: Callable[[Day, Any, BaseException | None], None],
    on_retry: Callable[[list[Day]], None] | None = None,
) -> None:
    """Calls `fn(day)` for every day and `on_result(day, result, error)` as each one finishes.

    A day that raises (or whose worker dies) gives `error` and never stops the others. `fn` must
    pickle (a module-level function, or a functools.partial of one) when `workers` > 1. When a
    worker died and broke the pool, `on_retry(days)` is told the days about to be retried, each
    in a process of its own (before any of them is).
    """
    if len(days) <= 1 or workers <= 1:
        for day in days:
            try:
                result = fn(day)
            except Exception as exc:
                on_result(day, None, exc)
            else:
                on_result(day, result, None)
        return
    unfinished = _run_pooled(fn, days, workers, on_result)
    if unfinished:
        if on_retry is not None:
            on_retry(unfinished)
        # A dead worker (the OOM killer, a crash in native code) breaks the whole pool and every
        # day still in it, and which day killed it is unknown: each of those days is tried once
        # more in a process of its own, so only a day that kills its worker again fails.
        with ThreadPoolExecutor(max_workers=min(workers, len(unfinished))) as threads:
            list(threads.map(lambda day: _run_isolated(fn, day, on_result), unfinished))


def _run_pooled(fn: Callable[[Day], Any], days: Sequence[Day], workers: int,
                on_result: Callable[[Day, Any, BaseException | None], None]) -> list[Day]:
    """Runs `days` on one pool; returns the days lost when a worker died (the pool is then broken)."""
    broken: list[Day] = []
    with ProcessPoolExecutor(max_workers=min(workers, len(days)), mp_context=pool_context()) as pool:
        pending: dict[Future, Day] = {pool.submit(fn, day): day for day in days}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                day = pending.pop(future)
                try:
                    result = future.result()
                except BrokenProcessPool:
                    broken.append(day)
                except Exception as exc:
                    on_result(day, None, exc)
                else:
                    on_result(day, result, None)
    order = {day: i for i, day in enumerate(days)}
    return sorted(broken, key=order.__getitem__)


class WorkerDied(RuntimeError):
    """A day's own worker process ended without a result (killed by a signal, or crashed)."""

    def __init__(self, exitcode: int | None):
        self.exitcode = exitcode
        if exitcode is not None and exitcode < 0:
            hint = "; out of memory?" if -exitcode == signal.SIGKILL else ""
            super().__init__(f"worker killed (signal {-exitcode}{hint})")
        else:
            super().__init__(f"worker died (exit code {exitcode})")


def _call_and_send(fn: Callable[[Day], Any], day: Day, send: Any) -> None:
    try:
        result = ("ok", fn(day))
    except Exception as exc:
        result = ("error", exc)
    send.send(result)
    send.close()


def _run_isolated(fn: Callable[[Day], Any], day: Day,
                  on_result: Callable[[Day, Any, BaseException | None], None]) -> None:
    """`fn(day)` in a process of its own, whose exit code says how it died if it did."""
    context = pool_context()
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_call_and_send, args=(fn, day, send), daemon=True)
    process.start()
    send.close()  # the child holds the other end: its death is then EOF here
    try:
        status, value = receive.recv()
    except EOFError:
        process.join()
        on_result(day, None, WorkerDied(process.exitcode))
        return
    finally:
        receive.close()
    process.join()
    if status == "ok":
        on_result(day, value, None)
    else:
        on_result(day, None, value)
