"""A tiny progress reporter for long command-line work (no dependency).

In a terminal (the stream's `isatty()` is true) it redraws one bar in place with `\\r`:

    generate [############------------------]  2/5  40%  12.1 s, ~18 s left  2025-03-11

Anywhere else (a log file, a pipe, Dagster's captured stderr) it writes plain lines, one each
time another `every` share (default 10 %) is done, and one at the end:

    generate: 2/5 (40%) 12.1 s, ~18 s left 2025-03-11

    with Progress(len(days), "generate") as progress:
        for day in days:
            ...
            progress.update(note=str(day))

`QUANTGOD_PROGRESS=lines` forces plain lines, `QUANTGOD_PROGRESS=off` silences it.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import Any, TextIO, TypeVar

__all__ = ["ENV_PROGRESS", "Progress", "track"]

ENV_PROGRESS = "QUANTGOD_PROGRESS"  # "bar" | "lines" | "off"; unset: a bar in a terminal, else lines
T = TypeVar("T")


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def _seconds(value: float) -> str:
    if value < 60:
        return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"
    minutes, seconds = divmod(round(value), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Progress:
    """Counts `total` steps and reports them on `stream` (default: stderr at construction).

    `mode`: "bar", "lines" or "off"; default from QUANTGOD_PROGRESS, else "bar" when the stream
    is a terminal and "lines" otherwise. `every`: the share between two plain lines.
    `min_interval_s`: the least time between two redraws of the bar (the last step always draws).
    """

    def __init__(
        self,
        total: int,
        label: str = "progress",
        *,
        stream: TextIO | None = None,
        mode: str | None = None,
        every: float = 0.10,
        width: int = 30,
        min_interval_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ):
        if total < 0:
            raise ValueError(f"total must be >= 0, got {total}")
        if not 0 < every <= 1:
            raise ValueError(f"every must be a share in (0, 1], got {every}")
        self.total = int(total)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        mode = mode or os.environ.get(ENV_PROGRESS) or ("bar" if _is_tty(self.stream) else "lines")
        if mode not in ("bar", "lines", "off"):
            raise ValueError(f"mode must be bar, lines or off, got {mode!r}")
        self.mode = mode
        self.every = every
        self.width = width
        self.min_interval_s = min_interval_s
        self.clock = clock
        self.done = 0
        self.started = clock()
        self._last_draw = -math.inf
        self._last_step = 0  # the last `every` step a plain line was written for (0: none yet)
        self._bar_len = 0
        self._last_line_done: int | None = None
        self._closed = False

    # -- counting

    def update(self, n: int = 1, note: str = "") -> None:
        """`n` more steps are done; `note` (e.g. the day just finished) goes at the line's end."""
        self.done = min(self.done + n, self.total) if self.total else self.done + n
        if self.mode == "bar":
            now = self.clock()
            if self.done >= self.total or now - self._last_draw >= self.min_interval_s:
                self._draw_bar(note)
                self._last_draw = now
        elif self.mode == "lines":
            step = self._step()
            if step > self._last_step:
                self._last_step = step
                self._write_line(note)

    def close(self, note: str = "") -> None:
        """Ends the report: the bar's line is finished; a last plain line if the end had none."""
        if self._closed:
            return
        self._closed = True
        if self.mode == "bar":
            if self._bar_len:
                self.stream.write("\n")
                self.stream.flush()
        elif self.mode == "lines" and (self._last_line_done != self.done or note):
            self._write_line(note)  # stopped between two steps (or nothing written yet): where it ended

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- drawing

    @property
    def share(self) -> float:
        return self.done / self.total if self.total else 1.0

    def _step(self) -> int:
        # how many `every` shares are done (the end is always its own step)
        if self.total and self.done >= self.total:
            return math.ceil(1 / self.every)
        return int(self.share / self.every + 1e-9)

    def _timing(self) -> str:
        elapsed = self.clock() - self.started
        text = _seconds(elapsed)
        if 0 < self.done < self.total:
            text += f", ~{_seconds(elapsed / self.done * (self.total - self.done))} left"
        return text

    def _counts(self) -> str:
        width = len(str(self.total))
        return f"{self.done:>{width}}/{self.total}"

    def _draw_bar(self, note: str) -> None:
        filled = int(self.width * self.share)
        bar = "#" * filled + "-" * (self.width - filled)
        text = f"{self.label} [{bar}] {self._counts()} {100 * self.share:3.0f}%  {self._timing()}"
        if note:
            text += f"  {note}"
        pad = max(self._bar_len - len(text), 0)  # blank out the rest of a longer previous line
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._bar_len = len(text)

    def _write_line(self, note: str) -> None:
        text = f"{self.label}: {self._counts()} ({100 * self.share:.0f}%) {self._timing()}"
        if note:
            text += f" {note}"
        self.stream.write(text + "\n")
        self.stream.flush()
        self._last_line_done = self.done


def track(items: Iterable[T], total: int | None = None, label: str = "progress", **kwargs: Any) -> Iterator[T]:
    """Yields `items`, counting one step after each (the total from `len(items)` when not given)."""
    if total is None:
        if not isinstance(items, Sized):  # what len() would refuse anyway, said plainly
            raise TypeError(f"track() needs total= for a {type(items).__name__}, which has no len()")
        total = len(items)
    with Progress(total, label, **kwargs) as progress:
        for item in items:
            yield item
            progress.update()
