"""The file logs, exactly as the team's existing logs look.

    logs/etl/etl_20260218_103201.log
    logs/labelling/labelling_SELL_0004_BUY_0008_1h_20260218_103201.log
    logs/labelling/labelling_processing.log      (cumulative: every labelling run appends to it)

    2026-02-18 10:32:01 [INFO]  Processing: 2025-03-14_BTCUSDT_ob200.data.zip
    2026-02-18 10:32:03 [WARNING] Significant gaps: 12.5 % of seconds invalid ...

The level in brackets is padded to the width of `[ERROR]` plus one space, so INFO, DEBUG and ERROR
messages line up (two spaces after `[INFO]`). Files rotate at 50 MB with 5 backups. Retention: the
newest 30 ETL and labelling logs are kept; optimization and training logs are all kept (they are
the record of experiments).

`run_log(...)` opens a log for one run and can forward every line to another logger (Dagster's
`context.log`), so the file and the run log say the same thing. This module does not import dagster.

Secrets never reach a log: every handler `open_log` attaches carries a `RedactingFilter`
(`secrets.py`), so a `scheme://user:password@` or `?password=` in a line (or its traceback) is
written as `scheme://user:***@`, in the file and in the forwarded line alike.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from logging.handlers import RotatingFileHandler
from pathlib import Path

from .secrets import RedactingFilter, redact_text

__all__ = [
    "DATE_FORMAT",
    "KEEP_NEWEST",
    "ForwardingHandler",
    "LogFormatter",
    "RedactingFilter",
    "close_log",
    "log_file_name",
    "open_log",
    "processing_log_name",
    "prune_logs",
    "run_log",
]

DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
MAX_BYTES = 50 * 1024 * 1024
BACKUP_COUNT = 5
KEEP_NEWEST: dict[str, int | None] = {"etl": 30, "labelling": 30, "optimization": None, "training": None}
LEVEL_WIDTH = len("[ERROR]")
STAMP = re.compile(r"_(\d{8}_\d{6})(?:_\d+)?\.log$")

_counter = itertools.count()


class LogFormatter(logging.Formatter):
    """`2026-02-18 10:32:01 [INFO]  message`, any URL password in it masked."""

    def __init__(self) -> None:
        super().__init__(datefmt=DATE_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        level = f"[{record.levelname}]".ljust(LEVEL_WIDTH)
        line = f"{self.formatTime(record, self.datefmt)} {level} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact_text(line)


class ForwardingHandler(logging.Handler):
    """Passes each record's message on to another logger (e.g. Dagster's `context.log`)."""

    def __init__(self, target: logging.Logger | logging.LoggerAdapter) -> None:
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.target.log(record.levelno, redact_text(record.getMessage()))
        except Exception:
            self.handleError(record)


def log_file_name(module: str, config_suffix: str | None = None, when: dt.datetime | None = None) -> str:
    """`etl_20260218_103201.log`, or `labelling_SELL_0004_BUY_0008_1h_20260218_103201.log`."""
    stamp = (when or dt.datetime.now()).strftime("%Y%m%d_%H%M%S")
    parts = [module, config_suffix, stamp] if config_suffix else [module, stamp]
    return "_".join(parts) + ".log"


def processing_log_name(module: str) -> str:
    """`labelling_processing.log`: the cumulative log every run of the module appends to."""
    return f"{module}_processing.log"


def _stamp(path: Path) -> str:
    match = STAMP.search(path.name)
    return match.group(1) if match else dt.datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y%m%d_%H%M%S")


def prune_logs(folder: str | Path, module: str, keep: int | None = None) -> list[Path]:
    """Deletes all but the newest `keep` `{module}_*.log` files (and their rotated backups).

    `keep` defaults to the module's retention (`KEEP_NEWEST`); None keeps everything.
    Returns the deleted paths.
    """
    if keep is None:
        keep = KEEP_NEWEST.get(module)
    if keep is None:
        return []
    folder = Path(folder)
    # the cumulative log is the module's history, never pruned (it rotates by size instead)
    logs = [p for p in folder.glob(f"{module}_*.log") if p.is_file() and p.name != processing_log_name(module)]
    logs.sort(key=lambda p: (_stamp(p), p.stat().st_mtime, p.name), reverse=True)
    deleted: list[Path] = []
    for path in logs[keep:]:
        for victim in [path, *folder.glob(path.name + ".*")]:
            try:
                victim.unlink()
                deleted.append(victim)
            except FileNotFoundError:
                pass
    return deleted


def open_log(
    module: str,
    logs_dir: str | Path,
    config_suffix: str | None = None,
    *,
    when: dt.datetime | None = None,
    forward_to: logging.Logger | logging.LoggerAdapter | None = None,
    cumulative: bool = False,
) -> logging.Logger:
    """A logger writing to `{logs_dir}/{module}/{name}` (rotating), optionally forwarding each line.

    `cumulative` also appends every line to `{logs_dir}/{module}/{module}_processing.log`.
    Old logs are pruned first, by the module's retention. Close it with `close_log`.
    """
    folder = Path(logs_dir) / module
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / log_file_name(module, config_suffix, when)
    newest = KEEP_NEWEST.get(module)
    prune_logs(folder, module, keep=None if newest is None else newest - 1)
    logger = logging.getLogger(f"quantgod.{module}.{next(_counter)}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addFilter(RedactingFilter())
    handler = RotatingFileHandler(path, maxBytes=MAX_BYTES, backupCount=BACKUP_COUNT, encoding="utf-8")
    handler.setFormatter(LogFormatter())
    handler.setLevel(logging.DEBUG)  # tracebacks go to the file only (DEBUG); the run log gets INFO and up
    handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
    if cumulative:
        history = RotatingFileHandler(folder / processing_log_name(module), mode="a", maxBytes=MAX_BYTES,
                                      backupCount=BACKUP_COUNT, encoding="utf-8")
        history.setFormatter(LogFormatter())
        history.setLevel(logging.DEBUG)
        history.addFilter(RedactingFilter())
        logger.addHandler(history)
    if forward_to is not None:
        forward = ForwardingHandler(forward_to)
        forward.setLevel(logging.INFO)
        forward.addFilter(RedactingFilter())
        logger.addHandler(forward)
    logger.log_path = path  # type: ignore[attr-defined]  # a plain attribute on the stdlib Logger: where its file is
    return logger


def close_log(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)
    logging.Logger.manager.loggerDict.pop(logger.name, None)


@contextmanager
def run_log(
    module: str,
    logs_dir: str | Path,
    config_suffix: str | None = None,
    *,
    forward_to: logging.Logger | logging.LoggerAdapter | None = None,
    cumulative: bool = False,
    when: dt.datetime | None = None,
) -> Iterator[logging.Logger]:
    """`when` names the file: steps of one run pass the run's start and so share one file."""
    logger = open_log(module, logs_dir, config_suffix, when=when, forward_to=forward_to, cumulative=cumulative)
    try:
        yield logger
    finally:
        close_log(logger)
