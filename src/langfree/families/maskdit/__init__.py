"""MaskDiT: masked latent diffusion transformer conditioned on CLIP embeddings (EDM), trained
language-free on noise-augmented image embeddings (the thesis "Fast Language-Free Text-to-Image
Generation"; REFERENCE.md §3).

    langfree train vae --data shapes.zip --preset shapes32 --outdir runs          # latent space
    langfree train maskdit --data shapes.zip --vae runs/00000-vae --preset shapes32 \
        --encoder open_clip:ViT-B-32/openai --kimg 200 --outdir runs              # masked stage
    langfree train maskdit --data shapes.zip --vae runs/00000-vae --preset shapes32-finetune \
        --init-from runs/00001-maskdit --kimg 20 --outdir runs                   # unmasked stage
    langfree convert maskdit-pt official.pt OUT --vae SD_VAE_DIR            # official weights

Light on purpose (no torch at import): the CLI reads SPEC to build ``--help``.
"""

from __future__ import annotations

from typing import Any

from langfree.families.spec import Flag, TrainSpec, check_caption_mixing, fit_resolution


def configure(data: dict, ctx: Any) -> dict:
    """Resolution from the archive, cond_dim from the encoder, latent shape from the VAE's
    config (a missing --vae fails here, before anything is loaded)."""
    from langfree.families.vae.latent_space import vae_geometry

    data = fit_resolution(data, ctx)
    if ctx.encoder is not None:
        data["cond_dim"] = ctx.encoder.embed_dim
    vae = _given_vae(ctx.request) or data.get("vae")
    data["latent_channels"], data["latent_downsample"] = vae_geometry(vae)
    return data


def _given_vae(request: Any) -> str | None:
    """The VAE spec from --vae or --set vae=...: the engine applies flags and overrides after
    ``configure``, so the hook reads them from the request itself."""
    spec = (getattr(request, "family_options", None) or {}).get("vae")
    for text in getattr(request, "overrides", None) or []:
        key, _, value = text.partition("=")
        if key.strip() == "vae":
            spec = value.strip().strip('"')
    return spec


def prepare(family: Any, ctx: Any) -> None:
    """Load the VAE (a reference); refuse caption mixing on an archive without captions."""
    config = family.config
    check_caption_mixing(config.mixing_prob, ctx.archive)
    family.load_vae(config.vae)


SPEC = TrainSpec(
    name="maskdit",
    family="langfree.families.maskdit.family:MaskDiTFamily",
    config="langfree.families.maskdit.config:MaskDiTConfig",
    presets="langfree.families.maskdit.config:PRESETS",
    help="Masked latent diffusion transformer (MaskDiT, EDM) conditioned on CLIP embeddings; "
         "language-free by default (noise-augmented image embeddings, no captions needed).",
    flags=(
        Flag(("--vae",), "vae", str,
             "VAE: a local diffusers AutoencoderKL dir or a `langfree train vae` run."),
        Flag(("--mask-ratio", "--mask_ratio"), "mask_ratio", float,
             "Fraction of tokens masked (0.5 = MaskDiT, 0 = unmasked fine-tune)."),
        Flag(("--mask-schedule",), "mask_schedule", str, "constant | cosine (over the run)."),
        Flag(("--mae-weight",), "mae_weight", float, "Weight of the MAE loss (official 0.1)."),
        Flag(("--cond-noise",), "cond_noise", float,
             "σ of the image-embedding noise augmentation (thesis gaus1.2 = 1.2; 0 = none)."),
        Flag(("--cond-dropout",), "cond_dropout", float, "P(null condition) for guidance."),
        Flag(("--mixing_prob", "--mixing-prob"), "mixing_prob", float,
             "P(image embedding) per sample: 1 = language-free, 0 = standard (captions)."),
        Flag(("--mirror",), "mirror", bool, "1: x-flip (latents of flipped images)."),
        Flag(("--lr",), "lr", float, "AdamW learning rate."),
    ),
    configure=configure,
    prepare=prepare,
    encoder="required",
    default_encoder="open_clip:ViT-B-32/openai",
    converters={"maskdit-pt": "langfree.families.maskdit.commands:maskdit_pt"},
)

__all__ = ["SPEC"]
