"""LafiteConfig: the single source of truth for a LAFITE model, and its preset registry.

Legend (paper / official option -> field here):
  --itd  (image-text contrastive through D's semantic head)   -> d_contrastive_weight
  --itc  (image-text contrastive through CLIP of fakes)       -> clip_contrastive_weight
  --temp (τ of the contrastive loss)                          -> temperature
  --gamma (R1 γ)                                              -> r1_gamma
  --mixing_prob (1 = language-free, 0 = standard)             -> mixing_prob
  aug_level_2 = 0.75 / 1 - aug_level_2 = 0.25 (pseudo text)   -> image_noise / image_weight
  aug_level_1 = 0.1  / 1 - aug_level_1 = 0.9  (real captions) -> text_noise / text_weight
  --change (scale/bias style form above this resolution)      -> change_resolution
REFERENCE.md §2 has the facts and where they come from in drboog/Lafite.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

CONDITIONING_MODES = ("gaussian", "learned", "none")
CONTRASTIVE_FORMS = ("infonce", "official_exp_cos")
D_PROJECTIONS = ("per_sample", "batch_sum")
CLIP_VIEWS = ("auto", "none")


@dataclass(frozen=True)
class LafiteConfig:
    # --- networks (REFERENCE §2: 256 px defaults give G 45.0 M + D 29.1 M parameters)
    resolution: int = 256
    z_dim: int = 512
    w_dim: int = 512
    c_dim: int = 512              # = encoder.embed_dim (the CLI fills it from the encoder)
    channel_base: int = 32768     # channels at resolution r: min(channel_base // r, channel_max)
    channel_max: int = 512
    d_channel_base: int | None = None  # D's own widths (None: the same as G's, as officially)
    d_channel_max: int | None = None
    mapping_layers: int = 8
    change_resolution: int = 256  # layers above this use style = bias(h) + affine(w)·scale(h)
    d_projection: str = "per_sample"  # paper's ⟨f_s(x_i), h_i⟩; "batch_sum" = official code
    mbstd_group_size: int = 4
    conv_clamp: int | None = None
    # G sees g_condition_gain·h (D and the losses see h). 1 = the paper. A unit 512-d CLIP
    # feature has components ~0.04 while w has components ~1, so at init G's per-layer styles
    # barely depend on h, and the text MLPs (lr multiplier 0.01) take thousands of kimg to
    # amplify it. √c_dim makes h as loud as w from the first step (shapes32).
    g_condition_gain: float = 1.0
    # Learning-rate multiplier of the mapping and per-layer text MLPs (official 0.01, made for
    # 25 000-kimg runs; weights are stored /lr_mult, so imported checkpoints keep 0.01). At CPU
    # scale 1.0 lets the condition path learn in tens of kimg (shapes32: colour 0.69 -> 0.86,
    # position 0.52 -> 0.79 at 40 kimg, benchmarks/lafite_ablation.py).
    style_lr_mult: float = 0.01

    # --- conditioning: what h (the "text" feature G and D see) is during training
    conditioning: str = "gaussian"  # gaussian (LAFITE-G) | learned (LAFITE-NN) | none (h = î)
    image_weight: float = 0.25      # h̃ = normalize(image_weight·î + image_noise·ε̂), cos ≈ 0.32
    image_noise: float = 0.75
    text_weight: float = 0.9        # t̃ = normalize(text_weight·t̂ + text_noise·ε̂)
    text_noise: float = 0.1
    mixing_prob: float = 1.0        # per sample: P(pseudo feature) vs real caption feature
    perturb_path: str | None = None  # trained perturbation (langfree train lafite-perturb)
    perturb_hidden: int = 1024      # LAFITE-NN MLP widths (official 512→1024→1024→1024→512)
    perturb_layers: int = 4

    # --- losses
    temperature: float = 0.5
    d_contrastive_weight: float = 10.0     # itd
    clip_contrastive_weight: float = 10.0  # itc
    contrastive_form: str = "infonce"      # or "official_exp_cos" (see loss.contrastive_loss)
    contrastive_lambda: float = 0.5        # weight of the fake→condition direction (official lam)
    contrastive_negatives: int = 0         # queue of past conditions as extra negatives (0 = off)
    clip_view: str = "auto"                # auto: official pad/crop to a ≥224-px CLIP; none
    r1_gamma: float = 10.0
    pl_weight: float = 2.0                 # 0 disables the Greg phase
    pl_batch_shrink: int = 2
    pl_decay: float = 0.01
    style_mixing: float = 0.9
    # D's phase reuses the fakes (and conditions) this step's G phase drew instead of running G
    # again: one G forward less per step. D then sees G one update older than officially.
    reuse_fakes: bool = False
    # Mode seeking (MSGAN, Mao et al. 2019, eq. 3; issue 9): G draws a second image G(z', h) for
    # the first mode_seeking_batch conditions of its batch and is rewarded for
    # d_img / (d_z / E[d_z]) up to mode_seeking_target, with d_img the mean |pixel difference|
    # in [0, 1] and d_z the mean |z - z'| (E[d_z] = 2/√π for N(0, I)): the ratio reads as the
    # pixel distance of two seeds, so the target is a data-like distance (real shapes of one
    # prompt differ by 0.07-0.18). Hinged, unlike MSGAN's 1/ratio, so it stops pushing once
    # seeds differ like the data. 0 disables it (and its extra G pass).
    # Transitional conditioning (loss.condition_ramp): the condition's strength rises 0 -> 1
    # over the first condition_rampup_kimg; 0 = conditioned from the first step (the paper).
    condition_rampup_kimg: float = 0.0
    mode_seeking_weight: float = 0.0
    mode_seeking_target: float = 0.15
    mode_seeking_batch: int = 8
    mirror: bool = True                    # x-flip reals; their features are NOT flipped

    # --- optimiser
    lr: float = 0.0025
    betas: tuple[float, float] = (0.0, 0.99)
    g_reg_interval: int = 4
    d_reg_interval: int = 16
    ema_kimg: float | None = None          # G_ema half-life; None = official 10 · batch / 32
    lr_rampdown: float = 0.0               # last fraction of the run: lr -> 0 (0 = official)

    def __post_init__(self) -> None:
        _choice("conditioning", self.conditioning, CONDITIONING_MODES)
        _choice("contrastive_form", self.contrastive_form, CONTRASTIVE_FORMS)
        _choice("d_projection", self.d_projection, D_PROJECTIONS)
        _choice("clip_view", self.clip_view, CLIP_VIEWS)
        if self.resolution < 4 or self.resolution & (self.resolution - 1):
            raise ValueError(f"resolution={self.resolution}: must be a power of two >= 4")
        if not 0.0 <= self.mixing_prob <= 1.0:
            raise ValueError(f"mixing_prob={self.mixing_prob}: must be in [0, 1] "
                             "(1 = language-free, 0 = standard)")
        if self.mode_seeking_weight < 0 or self.mode_seeking_target <= 0 or self.mode_seeking_batch < 1:
            raise ValueError("mode_seeking_weight must be >= 0, mode_seeking_target > 0 and "
                             "mode_seeking_batch >= 1")
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature}: must be > 0")
        for name in ("g_reg_interval", "d_reg_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")

    def replace(self, **changes) -> LafiteConfig:
        return dataclasses.replace(self, **changes)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r}: choose one of {', '.join(allowed)}")


# Presets: named, reviewed configurations (STYLE: presets live in a registry, not in flags).
PRESETS: dict[str, LafiteConfig] = {
    # The paper's model at 256 px (≈ 45 M G + 29 M D) with the official README's language-free
    # example (itd = itc = 20, τ 0.5, γ 10, mirror).
    "coco256": LafiteConfig(d_contrastive_weight=20.0, clip_contrastive_weight=20.0),
    # MM-CelebA-HQ at 256 px: same networks; no published per-dataset weights, so the seed
    # command's itd = itc = 10. Faces are mirror-symmetric, so x-flip stays on.
    "mmceleba256": LafiteConfig(),
    # This machine: 32-px shapes, small widths (32 channels), strong conditioning
    # (g_condition_gain 8), style_lr_mult 1 (the official 0.01 starves the condition path in a
    # tens-of-kimg run). ξ = 1 (cos(h̃, î) ≈ 0.71) is only the fallback: the quickstart sets
    # image_noise from the CLIP's measured caption-image cosine (conditioning.noise_for_cosine;
    # 0.18 for a small CLIP at cos ≈ 0.94).
    # What limits a CPU-length run is how fast G learns to draw edges: 40 kimg is only 1 250
    # steps, and even plain pixel regression of this G onto 64 images reaches only 0.80 of the
    # targets' high-frequency energy after 800 steps (benchmarks/lafite_g_learning_speed.py;
    # lr 0.016 gives 0.73 there, so the gain below comes from the adversarial dynamics, not
    # from G alone). lr is ~6x the official 0.0025, the best value of the sweep below. Measured with benchmarks/lafite_ablation.py (10 000 images, batch 32,
    # 40 kimg, one thread, evaluator on 4 000 images; image_noise 0.18), colour / shape / size
    # / position / all four:
    #   lr 0.002, no negatives queue, ξ = 1      0.893 / 0.286 / 0.491 / 0.923 / 0.127
    #   lr 0.002, queue 2048, ξ = 1              0.885 / 0.331 / 0.486 / 0.876 / 0.131
    #   lr 0.002, queue 2048                      0.930 / 0.371 / 0.537 / 0.952 / 0.184
    #   lr 0.004, queue 2048                      0.968 / 0.399 / 0.557 / 0.980 / 0.237
    #   lr 0.008, queue 2048                      0.986 / 0.433 / 0.636 / 0.985 / 0.335
    #   lr 0.016, queue 2048 (this preset)        0.984 / 0.649 / 0.788 / 0.992 / 0.565
    #   lr 0.024, queue 2048                      0.970 / 0.614 / 0.725 / 0.997 / 0.494
    #   lr 0.032, queue 2048                      0.614 / 0.291 / 0.520 / 0.819 / 0.092 (unstable)
    # Not the cause (lr 0.002): R1 γ 0.01 (shape 0.293), channel_max 64 (0.338, 2x time),
    # batch 16 (0.349 at lr 0.004), τ 0.1 (0.407 at lr 0.004), G_ema half-life 4 kimg (worse).
    # Caution: identical 40-kimg runs differ by up to ±0.07 in shape (0.47-0.61 measured for
    # this preset), so only the lr trend above is clearly more than run-to-run spread. Within
    # one run shape climbs steadily (0.39 at 16 kimg -> 0.61 at 44), without oscillation, so
    # averaging snapshots does not help (tried: last 3 / 5 snapshots, 0.58 vs 0.61 last) and an
    # lr ramp-down over the last half (lr_rampdown 0.5) lost ground (0.485); what helps is more
    # steps, hence reuse_fakes (-15 % time per step). CLIP guidance (itc) is the other lever:
    # at 150 kimg in the quickstart, itc 2 / 6 / 10 gave shape 0.788 / 0.807 / 0.799 and size
    # 0.863 / 0.906 / 0.908 (one run each): the CLIP tells shapes apart better than the young D.
    # Seeds (issue 9): without a mode-seeking term G ignores z. Measured with
    # benchmarks/lafite_ablation.py (--kimg 16, image_noise 0.1691 = this CLIP's cos 0.947,
    # evaluator and CLIP from the quickstart), colour / shape / size / position, diversity
    # (pixel; 1 = as varied as real images of the prompt), background coverage over 16 seeds:
    #   mode_seeking_weight 0                    0.922 / 0.513 / 0.505 / 0.997, 0.32, 0.42
    #   mode_seeking_weight 5                    0.950 / 0.510 / 0.540 / 0.998, 1.07, 0.87
    #   the same run continued to 24 kimg        0.969 / 0.554 / 0.597 / 1.000, 0.73, 0.78
    #   ... and to 32 kimg                        0.979 / 0.584 / 0.620 / 1.000, 0.44, 0.68
    #   weight 0, itc = itd = 0 (no contrastive)  0.563 / 0.226 / 0.337 / 0.840, 0.42, 0.37
    # Session 2026-12-02 (same CLIP recipe retrained, 20 000 images, one thread, machine loaded;
    # 315 attribute samples, 16 prompts x 16 seeds):
    #   weight 20 (this preset), 8 / 16 / 24 / 32 kimg:
    #     0.702 / 0.314 / 0.508 / 0.889, 0.65, 0.50
    #     0.895 / 0.441 / 0.575 / 0.984, 0.88, 0.88
    #     0.937 / 0.492 / 0.565 / 0.997, 1.04, 0.83
    #     0.952 / 0.549 / 0.606 / 0.997, 1.08, 0.77
    #   weight 0 with transitional conditioning (condition_rampup_kimg 16: G and D start
    #   unconditional, Shahbazi et al. 2022), 8 / 16 / 24 kimg:
    #     0.508 / 0.263 / 0.413 / 0.825, 0.65, 0.34
    #     0.956 / 0.457 / 0.613 / 0.987, 0.27, 0.34
    #     0.981 / 0.546 / 0.644 / 1.000, 0.16, 0.36
    # So the collapse comes with the condition, not from the early dynamics: a G that first
    # drew from z alone drops z again as soon as the condition grows. It is the conditional
    # objective itself: every h̃ is seen with one image, so a G that maps h̃ to one image is what
    # D rewards (and h̃ still carries some of the background: a probe reads it at 0.40, chance
    # 0.25). The mode-seeking term is what keeps z: at weight 5 the adversarial and contrastive
    # gradients outgrow it by 24 kimg, at weight 20 seed diversity holds at ~1.0 through 32 kimg
    # and the background follows z consistently across prompts (seed 3 draws gray for every
    # prompt), at an accuracy within run-to-run spread of the weight-5 run at equal kimg.
    # Coverage drifts down (0.88 -> 0.77) as G spends the seed distance on the object too.
    # Cost: one more G pass over mode_seeking_batch (8 of 32) samples per step.
    # Widths: channel_base 512 (16 channels at 32 px instead of 32, so 4x fewer FLOPs at
    # the costliest resolution) makes a training step 1.57x faster (3.25 -> 2.07 s, alternated
    # in one process, one thread, machine loaded) at no loss per kimg: with weight 20 it gave
    # 0.914 / 0.454 / 0.622 / 0.990, 0.99, 0.95 at 16 kimg and 0.949 / 0.571 / 0.638 / 0.997,
    # 1.05, 0.77 at 24 kimg (channel_base 1024: shape 0.441 and 0.492 there).
    # No mirror: the captions name left/right, and a flipped image with an unflipped feature
    # would teach G to ignore them. No path length: it costs a G pass every 4 steps for a
    # smoothness that does not show at 32 px.
    "shapes32": LafiteConfig(
        resolution=32, z_dim=64, w_dim=128, channel_base=512, channel_max=32,
        mapping_layers=2, change_resolution=32, mbstd_group_size=4, g_condition_gain=8.0,
        image_weight=0.5, image_noise=0.5, perturb_hidden=256,
        temperature=0.5, d_contrastive_weight=2.0, clip_contrastive_weight=6.0,
        r1_gamma=0.1, pl_weight=0.0, style_mixing=0.0, mirror=False,
        lr=0.016, ema_kimg=1.0, style_lr_mult=1.0, contrastive_negatives=2048,
        reuse_fakes=True, mode_seeking_weight=20.0,
    ),
}


def preset(name: str) -> LafiteConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown LAFITE preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return PRESETS[name]
