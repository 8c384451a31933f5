"""SDConfig: the small Stable-Diffusion-layout pipeline langfree trains itself, and its presets.

The layout is SD 1.x (diffusers ``UNet2DConditionModel`` with cross-attention, ``AutoencoderKL``,
a transformers ``CLIPTextModel`` and the 49 408-token CLIP tokenizer) at a size a 2-core CPU
trains in minutes. The noise schedule is SD's (scaled-linear betas 0.00085 -> 0.012 over 1000
steps, epsilon prediction), so every SD tool (pipelines, schedulers, Custom Diffusion) applies.

Legend (field -> diffusers config key):
  unet_channels     -> unet.block_out_channels (one CrossAttn down/up block per entry)
  vae_channels      -> vae.block_out_channels (latent side = resolution / 2**(len - 1))
  text_width        -> text_encoder.hidden_size = unet.cross_attention_dim
  norm_groups       -> norm_num_groups of both UNet and VAE
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "num_train_timesteps": 1000}  # SD 1.x's training schedule (its scheduler_config)


@dataclass(frozen=True)
class SDConfig:
    resolution: int = 32
    # --- UNet (epsilon prediction on latents)
    unet_channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    attention_head_dim: int = 8
    # --- VAE (KL autoencoder; trained first, then frozen while the UNet trains)
    vae_channels: tuple[int, ...] = (32, 64, 64)
    latent_channels: int = 4
    vae_steps: int = 300           # steps of the VAE stage before the UNet stage starts
    kl_weight: float = 1e-4        # SD uses 1e-6 at 512 px with a GAN loss; tiny latents need more
    # --- text encoder (CLIP text transformer; vocab is always the CLIP BPE's 49 408)
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_ff: int = 128
    train_text_encoder: bool = True  # a random frozen text encoder separates prompts poorly
    norm_groups: int = 8
    # --- training
    lr: float = 2e-4
    vae_lr: float = 1e-3
    weight_decay: float = 1e-2
    clip_grad_norm: float = 1.0
    caption_dropout: float = 0.1   # empty prompt this often, so classifier-free guidance works

    def __post_init__(self) -> None:
        factor = 2 ** (len(self.vae_channels) - 1)
        if self.resolution % (factor * 2 ** (len(self.unet_channels) - 1)):
            raise ValueError(f"resolution {self.resolution} must be divisible by the VAE factor "
                             f"{factor} times the UNet's {2 ** (len(self.unet_channels) - 1)}")
        for name in ("unet_channels", "vae_channels"):
            if any(c % self.norm_groups for c in getattr(self, name)):
                raise ValueError(f"{name} {getattr(self, name)}: every width must be divisible by "
                                 f"norm_groups={self.norm_groups}")
        if self.text_width % self.text_heads or self.unet_channels[0] % self.attention_head_dim:
            raise ValueError("text_width must divide by text_heads and unet_channels[0] by "
                             "attention_head_dim")

    @property
    def latent_resolution(self) -> int:
        return self.resolution // 2 ** (len(self.vae_channels) - 1)


PRESETS: dict[str, SDConfig] = {
    # 32 px captioned shapes on 2 CPU cores: 8x8x4 latents, ~1 M UNet parameters
    "tiny32": SDConfig(),
    # the Custom Diffusion quickstart's base (a few CPU minutes): a half-width VAE (its step
    # is 2.6x cheaper than tiny32's; shapes are flat colours, which it still reconstructs) and
    # a shorter VAE stage, at a higher lr for a run of a few hundred UNet steps
    "quick32": SDConfig(vae_channels=(16, 32, 32), vae_steps=150, lr=1e-3, vae_lr=2e-3),
    # for tests: one block each, seconds per step
    "test": SDConfig(resolution=16, unet_channels=(16, 32), vae_channels=(16, 16),
                     attention_head_dim=8, text_width=16, text_layers=1, text_heads=2, text_ff=32,
                     vae_steps=1),
}


@dataclass(frozen=True)
class SDSampleOptions:
    """How ``sample`` draws an image (the SD pipeline's call arguments of the same names)."""

    num_inference_steps: int = field(default=50, metadata={
        "min": 1, "max": 1000, "help": "denoising steps of the sampler"})
    guidance_scale: float = field(default=6.0, metadata={
        "min": 0.0, "max": 50.0, "help": "classifier-free guidance weight (1 = off)"})
    eta: float = field(default=0.0, metadata={
        "min": 0.0, "max": 1.0, "help": "DDIM eta: 0 deterministic, 1 = DDPM-like noise"})
    scheduler: str = field(default="ddim", metadata={
        "choices": ["ddim", "pndm", "ddpm"], "help": "sampler (diffusers scheduler class)"})


def replace(cfg: SDConfig, **changes) -> SDConfig:
    return dataclasses.replace(cfg, **changes)
