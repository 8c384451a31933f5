"""VQGAN config: the network (taming ``ddconfig`` + quantiser) and its training losses.

Legend (taming yaml key → field): ch, ch_mult, num_res_blocks, attn_resolutions, z_channels,
dropout as is; ``n_embed`` = codebook size; ``embed_dim`` = code vector width; ``disc_start`` in
optimiser steps; ``disc_weight`` = taming's disc_weight (λ of the adaptive weight);
``codebook_weight`` multiplies the VQ loss.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class VQGANConfig:
    # network (taming ddconfig, double_z false, in/out 3 channels)
    resolution: int = 256
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # 5 levels: 16× down, 16×16 tokens at 256 px
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    z_channels: int = 256
    embed_dim: int = 256
    n_embed: int = 8192  # DALL·E's codebook size (taming's f16 model uses 1024 or 16384)
    dropout: float = 0.0
    # GroupNorm groups (taming: 32). With 32 channels, 32 groups is a per-channel instance norm
    # that removes each channel's spatial mean, i.e. the image's flat colours (shapes32 measured)
    norm_groups: int = 32
    beta: float = 0.25  # commitment weight
    legacy_beta: bool = False  # True: taming's β-on-the-codebook-term (fine-tuning their ckpts)
    l2_codes: bool = False  # ViT-VQGAN's unit-sphere lookup (networks.VectorQuantizer); taming: off
    # losses
    rec_loss: str = "l1"  # l1 | l2
    perceptual_weight: float = 0.0  # > 0 needs perceptual_path (LPIPS-like weights, local file)
    perceptual_path: str | None = None
    codebook_weight: float = 1.0
    disc_start: int = 10_000  # optimiser steps before the patch discriminator is switched on
    disc_weight: float = 0.8
    adaptive_weight: bool = True  # taming's ||∇nll|| / ||∇g|| balance at decoder.conv_out
    disc_ndf: int = 64
    disc_layers: int = 3
    # dead codes: a code unused for dead_after steps is re-drawn from a random encoder output of
    # the current batch (checked every dead_check steps; 0 disables)
    dead_after: int = 200
    dead_check: int = 50
    # optimiser (taming: Adam(4.5e-6 × batch, betas (0.5, 0.9)))
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.9)

    def __post_init__(self) -> None:
        if self.rec_loss not in ("l1", "l2"):
            raise ValueError(f"rec_loss must be 'l1' or 'l2', got {self.rec_loss!r}")
        down = 2 ** (len(self.ch_mult) - 1)
        if self.resolution % down:
            raise ValueError(f"resolution {self.resolution} is not divisible by {down} "
                             f"(ch_mult {self.ch_mult} downsamples {down}×)")
        widths = {self.ch * m for m in (1, *self.ch_mult)}
        if self.norm_groups < 1 or any(w % self.norm_groups for w in widths) or self.ch <= 0:
            raise ValueError(f"every width ch × ch_mult must be a multiple of norm_groups "
                             f"{self.norm_groups} (GroupNorm): ch {self.ch}, ch_mult {self.ch_mult}")
        if self.perceptual_weight > 0 and not self.perceptual_path:
            raise ValueError("perceptual_weight > 0 needs perceptual_path: a local safetensors "
                             "file with LPIPS-style VGG16 weights (nothing is downloaded)")

    @property
    def grid(self) -> int:
        return self.resolution // 2 ** (len(self.ch_mult) - 1)

PRESETS: dict[str, VQGANConfig] = {
    # taming's ImageNet f16 geometry with DALL·E's 8192 codes (the seed's yaml)
    "f16_8192": VQGANConfig(),
    # DALL·E's 32×32 grid at 256 px: one level less
    "f8_8192": VQGANConfig(ch_mult=(1, 1, 2, 4), attn_resolutions=(32,)),
    # CPU: 32 px shapes -> 8×8 tokens; a small codebook the data can fill
    "shapes32": VQGANConfig(resolution=32, ch=64, ch_mult=(1, 1, 2), num_res_blocks=1,
                            attn_resolutions=(), z_channels=64, embed_dim=32, n_embed=512,
                            disc_start=2000, disc_ndf=32, disc_layers=2, lr=5e-4,
                            dead_after=100, dead_check=25),
    # The dalle quickstart's (trained beside the CLIP on stage 2's second core, batch 8): what
    # the shapes32 net learns fastest per second. Measured on 20 000 shapes, one thread, batch 8
    # unless said, machine loaded (PSNR at equal steps; "rec" = the evaluator on reconstructions
    # of 1 000 eval images, colour / shape / position, against 0.99 / 0.97 / 1.00 on originals):
    #   shapes32 (ch 64), batch 32, 187 steps   19.3 dB, rec 0.16 / 0.25 / 0.44 (grey blobs)
    #   ch 32 + l2_codes, 4 kimg batch 32       18.8 dB vs 17.6 dB without l2_codes
    #   ch 32, l2, lr 1e-3, 500 steps           17.3 dB (L1 loss; lr 2e-3 worse still)
    #   ch 32, l2, norm_groups 8, MSE, 625 st.  23.9 dB, rec 0.74 / 0.46 / 0.98
    #   ... embed_dim 8                          20.6 dB vs 20.1 at 312 steps
    # i.e. the L1 loss (MSE optimises what PSNR measures), taming's 32 norm groups (at 32
    # channels an instance norm that strips each image's flat colours) and the plain lookup
    # (the unit-sphere one keeps more codes alive) were what held the small VQGAN back.
    "shapes32-quick": VQGANConfig(resolution=32, ch=32, ch_mult=(1, 1, 2), num_res_blocks=1,
                                  attn_resolutions=(), z_channels=32, embed_dim=8, n_embed=512,
                                  norm_groups=8, l2_codes=True, rec_loss="l2",
                                  disc_start=10**9, disc_ndf=32, disc_layers=2, lr=5e-4,
                                  dead_after=100, dead_check=25),
    # tests: seconds
    "tiny": VQGANConfig(resolution=16, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                        attn_resolutions=(8,), z_channels=32, embed_dim=8, n_embed=64,
                        disc_start=2, disc_ndf=8, disc_layers=1, lr=1e-3,
                        dead_after=4, dead_check=2),
}

def preset(name: str, **overrides) -> VQGANConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown VQGAN preset {name!r}; choose from {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)
