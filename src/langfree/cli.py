"""The ``langfree`` command line. Thin: each command parses options and calls one function.

Heavy imports (torch, open_clip, ...) happen inside the commands, so ``langfree --help`` is fast.
"""

from __future__ import annotations

import typer

from langfree import __version__
from langfree.commands import (
    convert,
    data,
    encoders,
    evaluate,
    family_commands,
    generate,
    quickstart,
    serve,
    training,
)

app = typer.Typer(
    name="langfree",
    help="Text-to-image generation that needs no captions to train.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
encoder_app = typer.Typer(help="Train and inspect joint text-image encoders.", no_args_is_help=True)
train_app = typer.Typer(help="Train a model family on the one training loop.", no_args_is_help=True)
convert_app = typer.Typer(help="Import official checkpoints as langfree snapshots.", no_args_is_help=True)
app.add_typer(encoder_app, name="encoder")
app.add_typer(train_app, name="train")
app.add_typer(convert_app, name="convert")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"langfree {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """langfree: language-free text-to-image generation."""


data.register(app)
encoders.register(app, encoder_app)
training.register(train_app)
evaluate.register(app)
generate.register(app)
convert.register(convert_app)
quickstart.register(app)
family_commands.register(app)
serve.register(app)

if __name__ == "__main__":
    app()
