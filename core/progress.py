"""Progress bars for long work (rich), quiet on non-zero ranks and when --json is asked for."""
from __future__ import annotations

import os
import sys
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


@contextmanager
def progress_bar():
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
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_bar() as p:
        task = p.add_task(description, total=total)
        for item in items:
            yield item
            p.advance(task)
