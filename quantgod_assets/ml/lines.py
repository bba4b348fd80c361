"""Where the ML stages' lines go.

Every module of `ml/` logs to its own `logging.getLogger(__name__)`, all under the
`quantgod_assets.ml` logger. A caller that wants the lines (the Dagster assets: the run log and
the file log; the Optuna worker: its stdout) attaches a handler for the duration of a stage:

    with lines_to(ForwardingHandler(run_logger)):
        run_optimization(settings)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["ML_LOGGER", "lines_to"]

ML_LOGGER = "quantgod_assets.ml"


@contextmanager
def lines_to(handler: logging.Handler) -> Iterator[logging.Handler]:
    """Sends the ML stages' INFO-and-up lines to `handler` while the block runs."""
    logger = logging.getLogger(ML_LOGGER)
    level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        # the root's WARNING would drop the progress lines before any handler saw them
        logger.setLevel(logging.INFO)
    if handler.level == logging.NOTSET:
        handler.setLevel(logging.INFO)
    logger.addHandler(handler)
    # the handler is where the lines go: a root handler some library set up (MLflow's does) would
    # print each of them a second time as `INFO:quantgod_assets.ml...` on the console
    propagate, logger.propagate = logger.propagate, False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
