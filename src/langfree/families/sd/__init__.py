"""A small Stable-Diffusion-layout latent diffusion pipeline that langfree trains itself
(``langfree train sd``) and writes in the diffusers layout (``StableDiffusionPipeline``
loads it): the base for Custom Diffusion on a machine with no pretrained weights.

Light on purpose: ``SPEC`` only (no torch import).
"""

from langfree.families.spec import Flag, TrainSpec

_P = "langfree.families.sd"

SPEC = TrainSpec(
    name="sd",
    family=f"{_P}.family:SDFamily",
    config=f"{_P}.config:SDConfig",
    presets=f"{_P}.config:PRESETS",
    help="Small Stable Diffusion (UNet + KL-VAE + CLIP text encoder) trained on a captioned archive.",
    flags=(
        Flag(("--vae_steps",), "vae_steps", int, "steps of the VAE stage before the UNet stage"),
        Flag(("--train_text_encoder",), "train_text_encoder", bool, "train the CLIP text encoder (0/1)"),
    ),
    configure=f"{_P}.family:configure",
    encoder="none",
    preview_seeds=2,  # 50-step guided sampling per preview image
)
