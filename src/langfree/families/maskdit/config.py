"""MaskDiTConfig: the single source of truth for a MaskDiT model and its training objective,
its preset registry, and the sampling options.

Legend (official option / thesis -> field here; REFERENCE.md §3):
  model_type DiT-XL/2                          -> hidden / depth / heads / patch (MASKDIT_SIZES)
  decoder 512 wide, 8 deep, 16 heads (fixed)   -> decoder_hidden / decoder_depth / decoder_heads
  num_classes (512 = CLIP ViT-B/32 in thesis)  -> cond_dim
  mask_ratio / mask_ratio_fn / mask_ratio_min  -> mask_ratio / mask_schedule (+ power) / mask_ratio_min
  mae_loss_coef                                -> mae_weight
  class_dropout_prob                           -> cond_dropout
  train.perturbation (std, "gaus1.2")          -> cond_noise
  LAFITE --mixing_prob                         -> mixing_prob (1 = language-free)
  P_mean / P_std / sigma_data                  -> p_mean / p_std / sigma_data
  lr, Adam(W) betas (0.9, 0.999), wd 0         -> lr / betas / weight_decay
  EMA decay 0.9999 per step                    -> ema_decay
  xflip                                        -> mirror
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from langfree.families.maskdit.loss import MASK_SCHEDULES
from langfree.families.maskdit.networks import MASKDIT_SIZES


@dataclass(frozen=True)
class MaskDiTConfig:
    # --- latent space: image resolution / latent_downsample = latent size (the VAE's factor)
    resolution: int = 256          # image px (the CLI fills it from the archive)
    latent_channels: int = 4
    latent_downsample: int = 8     # SD kl-f8; langfree's small VAE for 32 px uses 4
    vae: str | None = None         # a local diffusers AutoencoderKL dir or a langfree VAE snapshot
    latent_scale: float | None = None  # multiplies latents to std ≈ σ_data·2; None = the VAE's
    # --- network (defaults: MaskDiT-XL/2 with the official decoder, 730.5 M at cond_dim 1000)
    cond_dim: int = 512            # = encoder.embed_dim (the CLI fills it)
    hidden: int = 1152
    depth: int = 28
    heads: int = 16
    patch: int = 2
    decoder_hidden: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    mlp_ratio: float = 4.0
    learn_sigma: bool = False      # official DiT predicts a variance; EDM does not use it
    # --- EDM (Karras et al. 2022)
    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2
    # --- masking (MaskDiT)
    mask_ratio: float = 0.5        # 0 = the unmasked fine-tune stage
    mask_schedule: str = "constant"  # constant | cosine (over the run's progress fraction)
    mask_ratio_min: float = 0.0
    mask_cosine_power: int = 4
    mae_weight: float = 0.1
    # --- conditioning (language-free thesis)
    cond_noise: float = 1.2        # σ_aug of c' = normalize(normalize(c) + p·u), p ~ N(0, σ²)
    cond_dropout: float = 0.1      # probability of the null (zero) condition
    mixing_prob: float = 1.0       # P(image embedding) vs caption embedding; 0 = standard
    mirror: bool = False           # x-flip (the thesis trains without; faces are symmetric)
    # --- optimiser (official: AdamW, wd 0, constant lr 1e-4, EMA 0.9999)
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    ema_decay: float = 0.9999
    lr_rampup_kimg: float = 0.0

    def __post_init__(self) -> None:
        _positive(self, "resolution", "latent_channels", "latent_downsample", "cond_dim",
                  "hidden", "depth", "heads", "patch", "sigma_data", "p_std", "lr")
        if self.resolution % self.latent_downsample:
            raise ValueError(f"resolution={self.resolution} is not divisible by "
                             f"latent_downsample={self.latent_downsample}; pick a VAE whose "
                             "factor divides the image size")
        if self.latent_size % self.patch:
            raise ValueError(f"latent size {self.latent_size} (resolution / latent_downsample) "
                             f"is not divisible by patch={self.patch}; use patch 1, 2 or 4")
        _divisible("hidden", self.hidden, "heads", self.heads)
        if self.hidden % 4:
            raise ValueError(f"hidden={self.hidden}: must be divisible by 4 (2-D sin-cos positions)")
        if self.decoder_depth < 0:
            raise ValueError(f"decoder_depth={self.decoder_depth}: use 0 (no decoder) or more")
        if self.decoder_depth > 0:
            if not 0 < self.decoder_hidden <= self.hidden // 2:
                raise ValueError(f"decoder_hidden={self.decoder_hidden}: must be in "
                                 f"1..{self.hidden // 2} (at most half of hidden={self.hidden}; "
                                 "the decoder is meant to be light)")
            _divisible("decoder_hidden", self.decoder_hidden, "decoder_heads", self.decoder_heads)
            if self.decoder_hidden % 4:
                raise ValueError(f"decoder_hidden={self.decoder_hidden}: must be divisible by 4")
        if self.mask_schedule not in MASK_SCHEDULES:
            raise ValueError(f"mask_schedule={self.mask_schedule!r}: choose one of "
                             f"{', '.join(MASK_SCHEDULES)}")
        for name in ("mask_ratio", "mask_ratio_min"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name}={getattr(self, name)}: must be in [0, 1) "
                                 "(0.5 = MaskDiT, 0 = unmasked fine-tune)")
        if self.mask_ratio_min > self.mask_ratio:
            raise ValueError(f"mask_ratio_min={self.mask_ratio_min} exceeds "
                             f"mask_ratio={self.mask_ratio}")
        if self.mask_ratio > 0 and keep(self) < 1:
            raise ValueError(f"mask_ratio={self.mask_ratio} leaves no visible token of "
                             f"{self.tokens}; lower it")
        for name in ("cond_dropout", "mixing_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)}: must be in [0, 1]")
        for name in ("cond_noise", "mae_weight", "weight_decay", "lr_rampup_kimg"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 0")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay={self.ema_decay}: must be in [0, 1) (0.9999 official)")
        if self.latent_scale is not None and self.latent_scale <= 0:
            raise ValueError(f"latent_scale={self.latent_scale}: must be > 0, or null to "
                             "take the VAE's scaling factor")

    @property
    def latent_size(self) -> int:
        return self.resolution // self.latent_downsample

    @property
    def tokens(self) -> int:
        return (self.latent_size // self.patch) ** 2

    def replace(self, **changes) -> MaskDiTConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_size(cls, size: str, **changes) -> MaskDiTConfig:
        """A config with the encoder/decoder shapes of ``MASKDIT_SIZES[size]``."""
        if size not in MASKDIT_SIZES:
            raise ValueError(f"unknown size {size!r}; choose one of {', '.join(MASKDIT_SIZES)}")
        return cls(**{**dataclasses.asdict(MASKDIT_SIZES[size]), **changes})


def keep(cfg: MaskDiTConfig) -> int:
    return int(cfg.tokens * (1 - cfg.mask_ratio))


def _positive(cfg, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) <= 0:
            raise ValueError(f"{name}={getattr(cfg, name)}: must be > 0")


def _divisible(name: str, value: int, by_name: str, by: int) -> None:
    if by <= 0 or value % by:
        raise ValueError(f"{name}={value} is not divisible by {by_name}={by}; pick a divisor")


@dataclass(frozen=True)
class MaskDiTSampleOptions:
    """What a caller may change at sampling time (the engine's sampling contract)."""

    steps: int = field(default=40, metadata={
        "min": 1, "max": 1000,
        "help": "EDM Heun steps (2·steps - 1 network evaluations; 40 = official, 18 is close)"})
    guidance_scale: float = field(default=1.0, metadata={
        "min": 0.0, "max": 20.0,
        "help": "classifier-free guidance against the zero condition (1 = none; 1.5 for FID, "
                "4 saturates colours)"})

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= 1000:
            raise ValueError(f"steps={self.steps}: must be in 1..1000 (40 is the default)")
        if not 0.0 <= self.guidance_scale <= 20.0:
            raise ValueError(f"guidance_scale={self.guidance_scale}: must be in [0, 20] "
                             "(1 = unguided)")


_THESIS_256 = MaskDiTConfig.from_size("MaskDiT-XL/2", resolution=256, cond_dim=512)
# This machine: 32-px images, langfree's own 4-channel VAE at factor 4 (8×8 latents, 16 tokens
# of patch 2), a 192-wide 6-deep encoder and a 96-wide 2-deep decoder (4.76 M parameters). lr
# 1e-3 and EMA 0.999: the official 1e-4 / 0.9999 are for 100 k+ steps. REFERENCE §3: masking
# saves little at 16 tokens on CPU; it pays at 64 (patch 1).
_SHAPES32 = MaskDiTConfig(
    resolution=32, latent_downsample=4, cond_dim=512, hidden=192, depth=6, heads=6,
    patch=2, decoder_hidden=96, decoder_depth=2, decoder_heads=3, lr=1e-3, ema_decay=0.999,
)

PRESETS: dict[str, MaskDiTConfig] = {
    # The thesis's main run (configs/main_config/train/celeb_t2f_gaus1.2.yaml): MaskDiT-XL/2 on
    # SD kl-f8 latents (4×32×32, scale 0.18215 from the VAE), CLIP ViT-B/32 image embeddings
    # with σ_aug 1.2, mask 0.5, MAE 0.1, 10 % null, lr 1e-4, no x-flip (batch 128 on one A100).
    "mmceleba256": _THESIS_256,
    # Its fine-tune stage (--init-from the masked snapshot): mask 0, lr 1e-5 (batch 64).
    "mmceleba256-finetune": _THESIS_256.replace(mask_ratio=0.0, lr=1e-5),
    # FFHQ pre-training ("ffhq_t2f_gaus1.5.yaml", which actually sets 1.2).
    "ffhq256": _THESIS_256,
    "shapes32": _SHAPES32,
    # The quickstart's (``langfree quickstart --family maskdit``). Narrower than shapes32 (128
    # wide, 4 heads; decoder 64 wide, 2 deep: 2.2x fewer FLOPs a step), with the mask ratio
    # annealed from 0.5 to 0 over the run (the official cosine4 schedule, so the run ends as the
    # thesis's unmasked fine-tune), lr 2e-3 and EMA 0.995. At equal time the narrower network
    # takes twice the steps, and with this budget steps buy more than width; the measurements
    # are in langfree.families.maskdit.quickstart. Noise levels: EDM2's for latents (Karras et
    # al. 2024: ln σ ~ N(-0.4, 1.0²)) instead of EDM's pixel-space N(-1.2, 1.2²); more of the
    # steps land where the object's shape is decided (shape 0.821 against 0.788 at 180 kimg).
    "shapes32-quick": _SHAPES32.replace(
        hidden=128, heads=4, decoder_hidden=64, decoder_heads=2, mask_schedule="cosine",
        lr=2e-3, ema_decay=0.995, p_mean=-0.4, p_std=1.0),
    # Its unmasked fine-tune (--init-from a shapes32 snapshot).
    "shapes32-finetune": _SHAPES32.replace(lr=2e-4, mask_ratio=0.0),
}


def preset(name: str) -> MaskDiTConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown MaskDiT preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return PRESETS[name]
