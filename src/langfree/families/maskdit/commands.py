"""The MaskDiT family's command: ``langfree convert maskdit-pt`` (declared in its TrainSpec)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def maskdit_pt(
    src: Annotated[Path, typer.Argument(help="Official Anima-Lab/MaskDiT checkpoint (.pt with "
                                             "model / ema state dicts).")],
    dest: Annotated[Path, typer.Argument(help="Snapshot directory to write (must not exist).")],
    size: Annotated[str, typer.Option("--size", help="Network size the checkpoint was trained "
                                                     "at (MaskDiT-XL/2 for the official ones).")
                    ] = "MaskDiT-XL/2",
    cond_dim: Annotated[int, typer.Option("--cond-dim", help="Condition width: 1000 for the "
                                                             "ImageNet class checkpoints, the "
                                                             "encoder's width for CLIP ones.")
                        ] = 1000,
    resolution: Annotated[int, typer.Option("--resolution", help="Image size (256 with SD's "
                                                                 "kl-f8 VAE: 32×32 latents).")
                          ] = 256,
    vae: Annotated[str | None, typer.Option("--vae", help="Latent space to record with the "
                                                          "snapshot (a local diffusers "
                                                          "AutoencoderKL dir or a langfree VAE "
                                                          "run), so it can sample.")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="Other config fields, "
                                                                      "key=value.")] = None,
) -> None:
    """Convert an official MaskDiT checkpoint into a langfree ``maskdit`` snapshot, running none
    of its code (``torch.load(weights_only=True)``: tensors and plain containers only)."""
    from langfree.config import ConfigError, apply_overrides, to_dict
    from langfree.families.maskdit.config import MaskDiTConfig
    from langfree.families.maskdit.convert import import_official

    if dest.exists():
        raise typer.BadParameter(f"{dest} already exists; choose a new snapshot directory",
                                 param_hint="DEST")
    if not src.is_file():
        typer.echo(f"error: checkpoint {src} not found; pass an official MaskDiT .pt file",
                   err=True)
        raise typer.Exit(2)
    try:
        changes: dict = {"cond_dim": cond_dim, "resolution": resolution, "vae": vae}
        if vae is not None:
            from langfree.families.vae.latent_space import vae_geometry

            changes["latent_channels"], changes["latent_downsample"] = vae_geometry(vae)
        config = MaskDiTConfig.from_size(size, **changes)
        config = apply_overrides(MaskDiTConfig, to_dict(config), list(overrides or []))
        out = import_official(src, dest, config)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {out}")
