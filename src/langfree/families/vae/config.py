"""VAEConfig: the small KL autoencoder langfree trains itself, and its presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class VAEConfig:
    resolution: int = 32               # image px (the CLI fills it from the archive)
    width: int = 64                    # channels of the first level
    channel_mult: tuple[int, ...] = (1, 2, 2)  # one level per entry: factor 2^(levels - 1)
    latent_channels: int = 4
    kl_weight: float = 1e-6            # LDM kl-f8's
    rec_loss: str = "l1"               # l1 (LDM's) | l2 (MSE: keeps flat colours at CPU length)
    disc_start: int | None = None      # step from which the PatchGAN term is on (None = never)
    disc_weight: float = 0.1
    disc_width: int = 32
    disc_layers: int = 2
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.9)  # LDM's autoencoder Adam
    mirror: bool = True
    ema_decay: float = 0.999
    scale: float | None = None         # latent scaling factor; None = 1 / std measured

    def __post_init__(self) -> None:
        for name in ("resolution", "width", "latent_channels", "disc_width", "disc_layers", "lr"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)}: must be > 0")
        if not self.channel_mult or any(m <= 0 for m in self.channel_mult):
            raise ValueError(f"channel_mult={self.channel_mult}: give positive multipliers, "
                             "one per level, e.g. [1, 2, 2] for factor 4")
        if self.resolution % self.downsample:
            raise ValueError(f"resolution={self.resolution} is not divisible by the factor "
                             f"{self.downsample} of channel_mult={list(self.channel_mult)}")
        if self.rec_loss not in ("l1", "l2"):
            raise ValueError(f"rec_loss={self.rec_loss!r}: must be 'l1' or 'l2'")
        if self.kl_weight < 0 or self.disc_weight < 0:
            raise ValueError("kl_weight and disc_weight must be >= 0")
        if self.disc_start is not None and self.disc_start < 0:
            raise ValueError(f"disc_start={self.disc_start}: a step >= 0, or null for no "
                             "discriminator")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay={self.ema_decay}: must be in [0, 1)")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    def replace(self, **changes) -> VAEConfig:
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, VAEConfig] = {
    # 32-px images -> 4×8×8 latents (factor 4, 12× fewer values than pixels), 0.61 M
    # parameters: the latent space of the maskdit shapes32 preset. No discriminator: at 32 px
    # on CPU the L1 + KL autoencoder is enough for flat-colour shapes.
    "shapes32": VAEConfig(resolution=32, width=32, channel_mult=(1, 2, 2), latent_channels=4),
    # The maskdit quickstart's latent space: width 16 (0.15 M parameters), MSE, lr 1e-3, EMA
    # 0.99, trained at batch 8 (the plan's). Measured 2026-12-02 on the quickstart's data, one
    # thread each, two runs side by side on a quiet slow-kind machine (machine_peak: "AMD EPYC;
    # amx False; fp32 GEMM 190, conv fwd+bwd 220 ... -> slow kind; factor 1.00"); PSNR and evaluator
    # accuracy (colour / shape / size / position) of reconstructions of 1 000 eval images
    # (real images: 0.989 / 0.971 / 0.990 / 1.000):
    #   L1, lr 2e-4, batch 32, 12 kimg (before)  20.6 dB, 0.29 / 0.21 / 0.35 / 0.51  (1.1 min)
    #   MSE, lr 1e-3, batch 8, 10 kimg           30.3 dB, 0.99 / 0.77 / 0.89 / 1.00  (1.4 min)
    #   the same at width 32                     31.2 dB, 0.98 / 0.81 / 0.90 / 1.00  (3.2 min)
    #   MSE, lr 1e-3, batch 8, 20 kimg           33.0 dB, 0.99 / 0.91 / 0.96 / 1.00  (2.3 min)
    # L1 at batch 32 kept the background and lost the object (its colour and outline): the
    # median-seeking L1 on images that are mostly flat background; MSE and 4x the steps fix it.
    "shapes32-quick": VAEConfig(resolution=32, width=16, channel_mult=(1, 2, 2),
                                latent_channels=4, ema_decay=0.99, rec_loss="l2", lr=1e-3),
    # The same with the PatchGAN term from step 2000 (sharper edges, slower steps).
    "shapes32-gan": VAEConfig(resolution=32, width=32, channel_mult=(1, 2, 2), latent_channels=4,
                              disc_start=2000),
    # kl-f8 shape at 256 px (4×32×32), smaller than SD's (width 64 vs 128).
    "f8-256": VAEConfig(resolution=256, width=64, channel_mult=(1, 2, 4, 4), latent_channels=4),
}
