"""VQGAN (Esser et al. 2021) with taming-transformers' parameter names: the image tokenizer of
the DALL·E family, trained on the one loop (reconstruction + VQ + optional perceptual loss, a
patch discriminator switched on after ``disc_start`` steps, dead-code re-initialisation).

    langfree train vqgan --data shapes.zip --preset shapes32 --kimg 100 --outdir runs
    langfree convert taming-ckpt last.ckpt runs/taming-f16      # official weights, tensor-only

Light on purpose (no torch at import): the CLI reads SPEC to build ``--help``.
"""

from __future__ import annotations

from typing import Any

from langfree.families.spec import Flag, TrainSpec, fit_resolution


def configure(data: dict, ctx: Any) -> dict:
    """The archive's resolution (a preset at another resolution is refused)."""
    data = fit_resolution(data, ctx)
    return data


SPEC = TrainSpec(
    name="vqgan",
    family="langfree.families.vqgan.family:VQGANFamily",
    config="langfree.families.vqgan.config:VQGANConfig",
    presets="langfree.families.vqgan.config:PRESETS",
    help="VQGAN image tokenizer (taming-compatible weights) for DALL·E; logs PSNR, codebook "
         "perplexity and dead-code share, and re-draws dead codes.",
    flags=(
        Flag(("--codebook-size",), "n_embed", int, "Codebook entries (DALL·E 8192)."),
        Flag(("--disc-start",), "disc_start", int, "Step from which the discriminator is on."),
        Flag(("--disc-weight",), "disc_weight", float, "λ of the adaptive GAN weight."),
        Flag(("--rec-loss",), "rec_loss", str, "l1 | l2."),
        Flag(("--perceptual",), "perceptual_path", str,
             "Local LPIPS-style weights (safetensors); sets perceptual_weight 1.",
             convert=lambda p: {"perceptual_path": p, "perceptual_weight": 1.0}),
        Flag(("--lr",), "lr", float, "Adam learning rate."),
    ),
    configure=configure,
    encoder="none",
    converters={"taming-ckpt": "langfree.families.vqgan.commands:taming_ckpt"},
)

__all__ = ["SPEC"]
