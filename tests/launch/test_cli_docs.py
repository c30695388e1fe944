"""docs/cli.md must match the CLI (regenerate with `make cli-docs`)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_cli_reference_is_current(tmp_path):
    typer = str(Path(sys.executable).with_name("typer"))  # typer's own CLI, installed with the package
    out = tmp_path / "cli.md"
    subprocess.run([typer, "glotta.launch.cli", "utils", "docs", "--name", "glotta", "--output", str(out)], check=True)
    assert out.read_text() == DOCS.read_text(), "docs/cli.md is stale: run `make cli-docs`"


def test_help_lists_every_group():
    r = subprocess.run([sys.executable, "-m", "glotta.launch.cli", "--help"], capture_output=True, text=True, check=True)
    for group in ("data", "consent", "tokenizer", "train", "launch", "prune", "pipeline", "demo"):
        assert group in r.stdout
