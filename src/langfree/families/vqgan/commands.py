"""The VQGAN family's command: ``langfree convert taming-ckpt`` (declared in its TrainSpec)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def taming_ckpt(
    src: Annotated[Path, typer.Argument(help="Official taming-transformers VQGAN .ckpt "
                                             "(PyTorch Lightning file).")],
    dest: Annotated[Path, typer.Argument(help="Snapshot directory to write (must not exist).")],
    resolution: Annotated[int, typer.Option(
        "--resolution", help="Image size the model was trained at (sets which attention "
                             "resolutions its attention levels mean; taming: 256).")] = 256,
) -> None:
    """Convert a taming VQGAN checkpoint into a langfree ``vqgan`` snapshot, running none of
    its code (tensors only; the training-only ``loss.*`` weights are dropped)."""
    from langfree.families.vqgan.convert import ConvertError, convert_taming_ckpt

    if dest.exists():
        raise typer.BadParameter(f"{dest} already exists; choose a new snapshot directory",
                                 param_hint="DEST")
    try:
        out = convert_taming_ckpt(src, dest, resolution)
    except (ConvertError, FileNotFoundError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {out}")
