"""The progress reporter: a `\\r` bar in a terminal, plain lines every 10 % anywhere else."""

from __future__ import annotations

import io

import pytest

from quantgod_assets.progress import ENV_PROGRESS, Progress, track


class FakeStream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0  # one second per reading
        return self.now


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(ENV_PROGRESS, raising=False)


def test_not_a_tty_writes_a_line_every_ten_percent():
    stream = FakeStream(tty=False)
    with Progress(100, "etl", stream=stream, clock=Clock()) as progress:
        assert progress.mode == "lines"
        for _ in range(100):
            progress.update()
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 10  # 10 %, 20 %, ... 100 %, and no repeat on close
    assert [line.split(" (")[1].split(")")[0] for line in lines] == [f"{p}%" for p in range(10, 101, 10)]
    assert lines[0].startswith("etl:  10/100 (10%)") and "left" in lines[0]
    assert lines[-1].startswith("etl: 100/100 (100%)") and "left" not in lines[-1]


def test_not_a_tty_few_steps_one_line_each_with_note():
    stream = FakeStream(tty=False)
    with Progress(3, "generate", stream=stream, clock=Clock()) as progress:
        for day in ("d1", "d2", "d3"):
            progress.update(note=day)
    lines = stream.getvalue().splitlines()
    assert [line.split(" ")[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert [line.split(" ")[-1] for line in lines] == ["d1", "d2", "d3"]


def test_tty_redraws_one_bar_with_carriage_returns():
    stream = FakeStream(tty=True)
    with Progress(4, "train", stream=stream, width=8, min_interval_s=0, clock=Clock()) as progress:
        assert progress.mode == "bar"
        for _ in range(4):
            progress.update(note="x")
    text = stream.getvalue()
    assert text.count("\r") == 4 and text.endswith("\n") and text.count("\n") == 1
    frames = [f.rstrip() for f in text.strip("\n").split("\r") if f]
    assert frames[0].startswith("train [##------] 1/4  25%")
    assert frames[-1].startswith("train [########] 4/4 100%")


def test_tty_bar_is_throttled_but_always_draws_the_end():
    stream = FakeStream(tty=True)
    with Progress(1000, "x", stream=stream, min_interval_s=1e9, clock=Clock()) as progress:
        for _ in range(1000):
            progress.update()
    assert stream.getvalue().count("\r") == 2  # the first step and the last
    assert "1000/1000 100%" in stream.getvalue()


def test_tty_shorter_line_blanks_the_previous_one():
    stream = FakeStream(tty=True)
    progress = Progress(2, "x", stream=stream, min_interval_s=0, clock=Clock())
    progress.update(note="a long note " * 3)
    progress.update()
    progress.close()
    first, second = stream.getvalue().strip("\n").split("\r")[1:]
    assert len(second) >= len(first)


def test_stopped_early_reports_where_it_ended():
    stream = FakeStream(tty=False)
    with Progress(20, "training", stream=stream, clock=Clock()) as progress:
        for _ in range(5):  # early stopping at 5 of 20 epochs
            progress.update()
    lines = stream.getvalue().splitlines()
    assert lines[-1].startswith("training:  5/20 (25%)")
    assert sum("(20%)" in line for line in lines) == 1


def test_zero_total_and_off_and_env(monkeypatch):
    stream = FakeStream(tty=False)
    with Progress(0, "nothing", stream=stream, clock=Clock()):
        pass
    assert stream.getvalue().startswith("nothing: 0/0 (100%)")

    stream = FakeStream(tty=True)
    with Progress(5, "quiet", stream=stream, mode="off") as progress:
        progress.update(5)
    assert stream.getvalue() == ""

    monkeypatch.setenv(ENV_PROGRESS, "lines")
    stream = FakeStream(tty=True)
    with Progress(2, "forced", stream=stream, clock=Clock()) as progress:
        progress.update(2)
    assert "\r" not in stream.getvalue() and stream.getvalue().startswith("forced: 2/2")


def test_stream_without_isatty_is_not_a_terminal():
    class Bare:
        def __init__(self):
            self.parts = []

        def write(self, text):
            self.parts.append(text)

        def flush(self):
            pass

    bare = Bare()
    with Progress(1, "bare", stream=bare, clock=Clock()) as progress:
        progress.update()
    assert progress.mode == "lines" and "".join(bare.parts).startswith("bare: 1/1")


def test_track_yields_every_item():
    stream = FakeStream(tty=False)
    assert list(track([1, 2, 3, 4], label="t", stream=stream, clock=Clock())) == [1, 2, 3, 4]
    assert stream.getvalue().splitlines()[-1].startswith("t: 4/4 (100%)")


def test_bad_arguments():
    with pytest.raises(ValueError):
        Progress(-1)
    with pytest.raises(ValueError):
        Progress(1, every=0)
    with pytest.raises(ValueError):
        Progress(1, mode="fancy", stream=FakeStream(False))
