"""How results reach the user: a rich table on stderr-free stdout, or JSON with --json."""
from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

# Redirected to a file or a pipe, rich would wrap at 80 columns and split machine-readable lines
# (an `mlflow ui ...` command, a path); there, tables get room instead.
out = Console(width=None if sys.stdout.isatty() else 200)


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


def print_json_if(json_out: bool, obj: Any) -> bool:
    """`--json`: print obj as JSON and return True (the command is done); otherwise False (print tables)."""
    if json_out:
        print_json(obj)
    return json_out


def print_table(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, console=None) -> None:
    columns = list(columns or (rows[0].keys() if rows else []))
    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c, justify="left" if c in ("lang", "name", "shard", "key", "stage", "counter") else "right")
    for r in rows:
        table.add_row(*(_fmt(r.get(c)) for c in columns))
    (console or out).print(table)


def print_counters(title: str, counters: dict[str, int]) -> None:
    print_table(title, [{"counter": k, "value": v} for k, v in sorted(counters.items())], ["counter", "value"])


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)
