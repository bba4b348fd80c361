"""Running one function per day: in-process for one day, else on a pool of worker processes.

Plain Python (no dagster): the workers import only what `fn` needs.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, TypeVar

Day = TypeVar("Day")


def pool_context() -> multiprocessing.context.BaseContext:
    # fork after threads (Dagster's, polars') can deadlock; forkserver starts clean workers cheaply.
    if sys.platform != "win32" and "forkserver" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("forkserver")
    return multiprocessing.get_context("spawn")


def run_days(
    fn: Callable[[Day], Any],
    days: Sequence[Day],
    workers: int,
    on_result: Callable[[Day, Any, BaseException | None], None],
) -> None:
    """Calls `fn(day)` for every day and `on_result(day, result, error)` as each one finishes.

    A day that raises (or whose worker dies) gives `error` and never stops the others. `fn` must
    pickle (a module-level function, or a functools.partial of one) when `workers` > 1.
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
    with ProcessPoolExecutor(max_workers=min(workers, len(days)), mp_context=pool_context()) as pool:
        pending: dict[Future, Day] = {pool.submit(fn, day): day for day in days}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                day = pending.pop(future)
                try:
                    result = future.result()
                except Exception as exc:
                    on_result(day, None, exc)
                else:
                    on_result(day, result, None)
