"""Progress bars for long work (rich), quiet on non-zero ranks and when --json is asked for."""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")

# Progress and logs go to stderr so `--json` output on stdout stays machine-readable.
console = Console(stderr=True)
_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def enabled() -> bool:
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))
    return not _quiet and rank == 0 and sys.stderr.isatty()


# Under `glotta pipeline run` (GLOTTA_PROGRESS=lines) rank 0 reports its bars as one-line JSON
# events on stderr, which the runner draws as its own bars; this works through pipes, where rich
# would draw nothing.
PROGRESS_ENV = "GLOTTA_PROGRESS"
EVENT_PREFIX = "\x1eglotta-progress "


class LineProgress:
    """The subset of rich.Progress the stages use, sent as throttled events (at most ~2/s per task)."""

    def __init__(self, interval: float = 0.5):
        self.tasks: dict[int, dict] = {}
        self.interval = interval

    def add_task(self, description: str, total: float | None = None, **_) -> int:
        tid = len(self.tasks)
        self.tasks[tid] = {"id": tid, "d": description, "c": 0, "t": total, "_last": 0.0}
        self._emit(tid, force=True)
        return tid

    def update(self, task: int, *, description: str | None = None, completed: float | None = None,
               advance: float | None = None, total: float | None = None, **_) -> None:
        t = self.tasks[task]
        if description is not None:
            t["d"] = description
        if total is not None:
            t["t"] = total
        if completed is not None:
            t["c"] = completed
        if advance:
            t["c"] += advance
        self._emit(task)

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, advance=advance)

    def _emit(self, task: int, force: bool = False) -> None:
        t, now = self.tasks[task], time.monotonic()
        done = t["t"] is not None and t["c"] >= t["t"]
        if force or done or now - t["_last"] >= self.interval:
            t["_last"] = now
            event = {k: v for k, v in t.items() if not k.startswith("_")}
            sys.stderr.write(EVENT_PREFIX + json.dumps(event) + "\n")
            sys.stderr.flush()


def _line_mode() -> bool:
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))
    return os.environ.get(PROGRESS_ENV) == "lines" and rank == 0


@contextmanager
def progress_bar():
    if _line_mode():
        yield LineProgress()
        return
    p = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled(),
        transient=False,
    )
    with p:
        yield p


def track(items: Iterable[T], description: str, total: float | None = None) -> Iterator[T]:
    if not enabled() and not _line_mode():  # nothing would be drawn: no per-item cost (~5 us in rich)
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_bar() as p:
        task = p.add_task(description, total=total)
        for item in items:
            yield item
            p.advance(task)
