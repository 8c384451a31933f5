"""A small KL autoencoder langfree trains itself (``langfree train vae``), and the loader of local
diffusers ``AutoencoderKL`` directories: the latent spaces of the MaskDiT family.

    langfree train vae --data shapes.zip --preset shapes32 --kimg 200 --outdir runs
    langfree train maskdit --data shapes.zip --vae runs/00000-vae --preset shapes32 ...

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
    name="vae",
    family="langfree.families.vae.family:VAEFamily",
    config="langfree.families.vae.config:VAEConfig",
    presets="langfree.families.vae.config:PRESETS",
    help="A small KL autoencoder (reconstruction + KL, optional PatchGAN): the latent space "
         "for `langfree train maskdit --vae RUN`. Logs PSNR and latent statistics.",
    flags=(
        Flag(("--kl-weight",), "kl_weight", float, "Weight of the KL term (LDM kl-f8: 1e-6)."),
        Flag(("--rec-loss",), "rec_loss", str, "l1 | l2 (MSE)."),
        Flag(("--disc-start",), "disc_start", int,
             "Step from which the PatchGAN discriminator is on (default: never)."),
        Flag(("--disc-weight",), "disc_weight", float, "Weight of the adversarial term."),
        Flag(("--mirror",), "mirror", bool, "1: x-flip training images."),
    ),
    configure=configure,
    encoder="none",
)

__all__ = ["SPEC"]
