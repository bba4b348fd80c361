from __future__ import annotations

import datetime as dt
import logging
import os
import re
import time
from logging.handlers import RotatingFileHandler

import pytest

from quantgod_assets.logs import (
    LogFormatter,
    close_log,
    log_file_name,
    open_log,
    prune_logs,
    run_log,
)

WHEN = dt.datetime(2026, 2, 18, 10, 32, 1)


def _record(level: int, message: str) -> logging.LogRecord:
    record = logging.LogRecord("quantgod.etl", level, __file__, 1, message, None, None)
    record.created = time.mktime(WHEN.timetuple())  # local time, as the formatter prints it
    return record


def test_line_format_matches_the_team_logs():
    fmt = LogFormatter()
    line = fmt.format(_record(logging.INFO, "Processing: 2025-03-14_BTCUSDT_ob200.data.zip"))
    assert line == "2026-02-18 10:32:01 [INFO]  Processing: 2025-03-14_BTCUSDT_ob200.data.zip"
    assert fmt.format(_record(logging.ERROR, "x")) == "2026-02-18 10:32:01 [ERROR] x"
    assert fmt.format(_record(logging.WARNING, "x")) == "2026-02-18 10:32:01 [WARNING] x"


def test_file_names():
    assert log_file_name("etl", when=WHEN) == "etl_20260218_103201.log"
    assert log_file_name("labelling", "SELL_0004_BUY_0008_1h", when=WHEN) == (
        "labelling_SELL_0004_BUY_0008_1h_20260218_103201.log"
    )


@pytest.fixture
def forwarded(request):
    """A stand-in for Dagster's run log: (the logger to forward to, the (level, line) pairs it got)."""
    seen: list[tuple[int, str]] = []

    class Target(logging.Handler):
        def emit(self, record):
            seen.append((record.levelno, record.getMessage()))

    target = logging.getLogger(f"test.forward.{request.node.name}")
    target.propagate = False
    target.setLevel(logging.DEBUG)
    handler = Target()
    target.addHandler(handler)
    yield target, seen
    target.removeHandler(handler)


def test_open_log_writes_the_file_and_forwards(tmp_path, forwarded):
    target, seen = forwarded
    with run_log("etl", tmp_path, forward_to=target) as log:
        path = log.log_path
        log.info("Rows after resample: 1440")
        log.warning("Significant gaps: 12.00% of seconds invalid")
        log.debug("a traceback, for the file only")
    assert path.parent == tmp_path / "etl"
    assert re.fullmatch(r"etl_\d{8}_\d{6}\.log", path.name)
    lines = path.read_text().splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[INFO\]  Rows after resample: 1440", lines[0])
    assert lines[1].endswith("[WARNING] Significant gaps: 12.00% of seconds invalid")
    assert lines[2].endswith("[DEBUG] a traceback, for the file only")
    assert seen == [(logging.INFO, "Rows after resample: 1440"),
                    (logging.WARNING, "Significant gaps: 12.00% of seconds invalid")]


def test_rotation_is_50_mb_times_5(tmp_path):
    log = open_log("training", tmp_path, "tcn_lstm")
    try:
        [handler] = [h for h in log.handlers if isinstance(h, RotatingFileHandler)]
        assert handler.maxBytes == 50 * 1024 * 1024 and handler.backupCount == 5
        assert log.log_path.name.startswith("training_tcn_lstm_")
    finally:
        close_log(log)


def _fake_logs(folder, module, n, suffix=None):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        when = dt.datetime(2025, 1, 1) + dt.timedelta(hours=i)
        path = folder / log_file_name(module, suffix, when)
        path.write_text(f"log {i}\n")
        os.utime(path, (1_700_000_000 - i, 1_700_000_000 - i))  # mtime disagrees: the name wins
        paths.append(path)
    return paths


@pytest.mark.parametrize("module", ["etl", "labelling"])
def test_retention_keeps_the_newest_30(tmp_path, module):
    old = _fake_logs(tmp_path / module, module, 40, "SELL_0004_BUY_0008_1h" if module == "labelling" else None)
    (tmp_path / module / (old[0].name + ".1")).write_text("rotated backup of the oldest\n")
    log = open_log(module, tmp_path)
    close_log(log)
    left = sorted(p.name for p in (tmp_path / module).iterdir())
    assert len(left) == 30
    assert log.log_path.name in left
    assert [p.name for p in old[-29:]] == sorted(set(left) - {log.log_path.name})
    assert not (tmp_path / module / (old[0].name + ".1")).exists()


@pytest.mark.parametrize("module", ["optimization", "training"])
def test_experiment_logs_are_all_kept(tmp_path, module):
    _fake_logs(tmp_path / module, module, 40)
    close_log(open_log(module, tmp_path))
    assert len(list((tmp_path / module).iterdir())) == 41
    assert prune_logs(tmp_path / module, module) == []


def test_ml_lines_reach_the_file_and_the_forwarded_run_log(tmp_path, forwarded):
    """What the ML assets do: the stages log on their module loggers; `lines_to` hands those lines
    to the run's file log, which forwards them (INFO and up) to Dagster's run log."""
    from quantgod_assets.logs import ForwardingHandler
    from quantgod_assets.ml.lines import lines_to

    target, seen = forwarded
    stage = logging.getLogger("quantgod_assets.ml.final")
    with run_log("training", tmp_path, forward_to=target) as log, lines_to(ForwardingHandler(log)):
        path = log.log_path
        stage.info("Model saved: data/models/quantgod_cloud_model.pth")
        stage.warning("feature pictures skipped: ValueError: no finite row")
        stage.debug("not a line for either")
    stage.info("after the run: nowhere")
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("[INFO]  Model saved: data/models/quantgod_cloud_model.pth")
    assert lines[1].endswith("[WARNING] feature pictures skipped: ValueError: no finite row")
    assert seen == [(logging.INFO, "Model saved: data/models/quantgod_cloud_model.pth"),
                    (logging.WARNING, "feature pictures skipped: ValueError: no finite row")]
    assert logging.getLogger("quantgod_assets.ml").handlers == []
