"""LAFITE's own command: ``langfree convert lafite-pkl`` (declared in its TrainSpec)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def lafite_pkl(
    src: Annotated[Path, typer.Argument(help="Official LAFITE network-snapshot-*.pkl (drboog/Lafite).")],
    dest: Annotated[Path, typer.Argument(help="Snapshot directory to write (must not exist).")],
    preset: Annotated[str | None, typer.Option(
        "--preset", help="LAFITE preset whose training settings to keep (e.g. coco256); the "
                         "architecture always comes from the pickle.")] = None,
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", "--config", help="Config override KEY=VALUE (repeatable), applied last, e.g. "
                                  "--set d_projection=per_sample.")] = None,
) -> None:
    """Convert an official LAFITE pickle into a langfree snapshot, running none of its code.

    A restricted unpickler rebuilds tensors only; a file that tries to run code is refused.
    """
    from langfree.config import ConfigError
    from langfree.families.lafite.config import preset as lafite_preset
    from langfree.families.lafite.convert import (
        UnsafePickleError,
        official_config,
        read_official,
        write_snapshot,
    )

    if dest.exists():
        raise typer.BadParameter(f"{dest} already exists; choose a new snapshot directory",
                                 param_hint="DEST")
    try:
        base = lafite_preset(preset) if preset else None
        states, arch = read_official(src)
        config = official_config(arch, base, overrides or [])
        out = write_snapshot(states, config, dest, src.name)
    except UnsafePickleError as e:
        typer.echo(f"error: {src}: {e}", err=True)
        raise typer.Exit(2) from None
    except (FileNotFoundError, ValueError, ConfigError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {out} (architecture {arch})")
