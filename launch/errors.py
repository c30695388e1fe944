"""The one place where errors become messages: GlottaError -> red text, exit code 2."""
from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape

from glotta.errors import ConfigError, GlottaError

err = Console(stderr=True)


def report(e: GlottaError) -> int:
    kind = "config error" if isinstance(e, ConfigError) else "error"
    err.print(f"[bold red]{kind}:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
    return 2


def run_guarded(fn) -> None:
    try:
        fn()
    except GlottaError as e:
        sys.exit(report(e))


def guarded(fn):
    """Decorator for typer commands: a GlottaError prints one clear message and exits with 2."""
    import functools

    import typer

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GlottaError as e:
            raise typer.Exit(report(e)) from None

    return wrapper
