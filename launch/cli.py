"""The `glotta` command: assembles the command groups, nothing else.

Follow the data: data -> consent -> tokenizer -> train -> prune -> train.
"""
from __future__ import annotations

import logging
from typing import Annotated

import typer

from glotta import __version__
from glotta.launch.commands import consent, data, model, pipeline, prune, tokenizer
from glotta.launch.commands import train as train_cmd

app = typer.Typer(
    name="glotta",
    help="Distributed multilingual pretraining with consent filtering, fair tokenizers and CAT data pruning.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"glotta {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at DEBUG level.")] = False,
) -> None:
    from glotta.launch.quiet import quiet_libraries, verbose_requested

    verbose = verbose_requested(verbose)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        quiet_libraries()


# Command groups, in the order data flows through them.
app.add_typer(data.app, name="data", help="Import, inspect and build webdataset text shard sets.")
app.add_typer(consent.app, name="consent", help="Consent filtering: robots.txt, TDMRep and content signals, with an audit.")
app.add_typer(tokenizer.app, name="tokenizer", help="Build, evaluate and extend SentencePiece tokenizers; adapt checkpoints to them.")
app.command("train")(train_cmd.train)
app.add_typer(prune.app, name="prune", help="CAT pruning: score documents across checkpoints, select per language.")
app.add_typer(model.app, name="model", help="Export checkpoints to Hugging Face (Llama) and import HF models.")
app.command("generate")(model.generate)
app.add_typer(pipeline.app, name="pipeline", help="Run the whole pipeline, stage by stage, resumable.")
app.add_typer(train_cmd.launch_app, name="launch", help="Print or run the torchrun command for N nodes x G GPUs.")
app.command("demo")(pipeline.demo)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
