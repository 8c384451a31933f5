"""Stage 4 of ``langfree quickstart --family maskdit``: a small VAE on the image-only split, then
MaskDiT language-free on the same archive (no captions in it), through the same
``langfree.training.run.train`` calls ``langfree train vae`` / ``langfree train maskdit`` make.

    langfree train vae --data gan-images-only.zip --preset shapes32 --kimg VAE_KIMG
    langfree train maskdit --data gan-images-only.zip --vae VAE --encoder CLIP \
        --preset shapes32 --mixing_prob 1 --kimg KIMG

Stages 1-3 and 5-6 (data, CLIP, evaluator, metrics, grid) are the shared ones of
``langfree.quickstart``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langfree.quickstart import (
    FamilyStage,
    SideContext,
    StageContext,
    condition_noise,
    last_tick,
    reconstruction_ceiling,
    train_once,
)


@dataclass(frozen=True)
class MaskDiTQuickstartPlan:
    """Sizes of the maskdit stage. ``preset`` names both the VAE's and MaskDiT's preset."""

    vae_kimg: float = 20.0     # 2 500 steps: see vae PRESETS["shapes32-quick"]
    vae_batch: int = 8
    vae_overrides: tuple[str, ...] = ()
    preset: str = "shapes32-quick"
    kimg: float = 160.0         # 2 500 steps of the 2.2x cheaper preset at EDM2 noise levels (PLAN)
    batch: int = 64
    tick_kimg: float = 4.0
    lr_rampdown: float = 0.3    # half-cosine lr ramp-down over the last 30 % of the run
    overrides: tuple[str, ...] = ()
    sample_steps: int = 12      # Heun steps (23 evaluations) in the metrics, the grid, the preview
    guidance_scale: float = 3.0  # classifier-free guidance in the metrics, the grid, the preview


def _vae_request(out: Path, plan: Any, fp: MaskDiTQuickstartPlan, images_zip: Path):
    from langfree.training.options import TrainOptions
    from langfree.training.run import TrainRequest

    return TrainRequest(
        "vae", data=images_zip, preset=fp.preset, overrides=list(fp.vae_overrides),
        metrics="none",
        options=TrainOptions(outdir=str(out / "vae"), kimg=fp.vae_kimg, batch=fp.vae_batch,
                             tick_kimg=fp.tick_kimg, snap=1000, seed=plan.seed))


def train_vae(ctx: SideContext) -> None:
    """The side job: the VAE needs no CLIP, so it trains on stage 2's second core."""
    train_once(_vae_request(ctx.out, ctx.plan, ctx.family_plan, ctx.images_zip))


def _stage(ctx: StageContext) -> Path:
    from langfree.training.options import TrainOptions
    from langfree.training.run import TrainRequest

    plan, fp = ctx.plan, ctx.family_plan
    noise = condition_noise(ctx)
    ctx.log(f"    captions sit at cosine {noise['paired_cosine']} from their images under this "
            f"CLIP: the condition is noise-augmented with σ_aug {noise['xi']} (the thesis's 1.2 "
            "is for pretrained CLIP's modality gap)")
    ctx.stages.start(f"4/6 the VAE on {plan.gan_images} images without captions "
                     f"({fp.vae_kimg:g} kimg, trained beside the CLIP), then MaskDiT "
                     f"language-free on them ({fp.kimg:g} kimg)")
    vae = train_once(_vae_request(ctx.out, plan, fp, ctx.images_zip))  # reused when done
    t1 = time.time()
    snapshot = train_once(TrainRequest(
        "maskdit", data=ctx.images_zip, test_data=ctx.eval_zip, encoder=str(ctx.encoder_dir),
        preset=fp.preset, family_options={"vae": str(vae), "mixing_prob": 1.0},
        overrides=[f"cond_noise={noise['xi']}", *fp.overrides], metrics="none",
        sample=[f"steps={fp.sample_steps}", f"guidance_scale={fp.guidance_scale}"],
        options=TrainOptions(outdir=str(ctx.out / "maskdit"), kimg=fp.kimg, batch=fp.batch,
                             tick_kimg=fp.tick_kimg, snap=1000, seed=plan.seed,
                             lr_rampdown=fp.lr_rampdown)))
    ctx.sample.update(steps=fp.sample_steps, guidance_scale=fp.guidance_scale)
    ctx.report.update(maskdit={"paired_cosine": noise["paired_cosine"],
                               "cosine_used": noise["cosine_used"], "cond_noise": noise["xi"]},
                      vae={**_vae_figures(vae), "ceiling": _vae_ceiling(ctx, vae)},
                      maskdit_minutes=round((time.time() - t1) / 60, 2))
    return snapshot


def _vae_ceiling(ctx: StageContext, snapshot: Path) -> dict[str, Any]:
    """The evaluator on VAE reconstructions (posterior mean): the most MaskDiT's latents can draw."""
    from langfree.families.vae.latent_space import load_vae

    vae = load_vae(str(snapshot))
    return reconstruction_ceiling(ctx, lambda x: vae.decode(vae.encode(x)[0]))


def _vae_figures(snapshot: Path) -> dict[str, Any]:
    """The VAE run's last tick: reconstruction PSNR and latent statistics."""
    return last_tick(snapshot, {"psnr": "Loss/main/psnr", "latent_std": "Loss/main/latent_std",
                                "rec": "Loss/main/rec"})


# How the condition takes hold (2026-12-02, quiet slow-kind machine, machine_peak "AMD EPYC; amx
# False; fp32 GEMM 190, conv fwd+bwd 220 ... -> slow kind; factor 1.00"; two runs side by side at one
# thread each; the quickstart's data, CLIP (σ_aug 0.337) and evaluator; 189 attribute samples,
# Heun 10 steps; colour / shape / size / position, pixel diversity; "own/shuffled" is the
# denoiser's MSE at σ 2 with each latent's own image embedding over that with another's):
#   VAE 10 kimg (L1 era: 20.6 dB) 40 kimg, guidance 1     0.15 / 0.21 / 0.35 / 0.12  (quickstart)
#   VAE MSE 10 kimg, 40 kimg, guidance 3                  0.46 / 0.29 / 0.44 / 0.10, 1.01; 0.87
#     the same, guidance 6                                0.56 / 0.32 / 0.48 / 0.07, 0.85
#   VAE MSE 20 kimg, 80 kimg batch 64, guidance 3         0.76 / 0.49 / 0.53 / 0.53, 0.98; 0.35
#     40 kimg at batch 16 (same steps x 2, same time)     0.73 / 0.42 / 0.52 / 0.48, 0.90; 0.40
#     80 kimg, lr 2e-3                                    0.79 / 0.51 / 0.53 / 0.73, 0.84; 0.27
#     120 kimg                                            0.88 / 0.58 / 0.73 / 0.95, 0.94; 0.13
#     96 kimg, lr 2e-3 / 3e-3, Heun 8 steps               0.73 / 0.51 / 0.62 / 0.71 | 0.77 / 0.52
#                                                         / 0.64 / 0.73, 0.88 | 0.84
# Before ~1 000 steps the samples follow the seed alone (every row of a column alike); the
# prompt takes hold with steps, and guidance 3 sharpens it. PLAN's 110 kimg, from a fresh clone
# on the quiet machine: 11.8 min in all (MaskDiT 5.1 at 2.5-2.8 s/kimg, metrics 3.0), colour 0.869,
# shape 0.557, size 0.725, position 0.898, diversity 1.06, coverage 0.84, R-precision 0.712.
# Steps buy more than width (2026-12-02, machine_peak "AMD EPYC; amx False; fp32 GEMM 168,
# conv fwd+bwd 353 ... factor 1.86", on which the 110-kimg plan above ran in 11.97 min, as on the
# slow-kind machine; two runs side by side at one thread each, minutes of training; "cosine" =
# mask 0.5 annealed to 0 (cos4); "w128" = hidden 128 / 4 heads, decoder 64 / 2 heads):
#   w192 mask 0.5, 110 kimg (the plan above)                0.869 / 0.557 / 0.725 / 0.898
#   w192 cosine, 110 kimg (10.2 min)                        0.852 / 0.63 / 0.831 / 0.995, 0.93
#   w192 mask 0 (plain DiT), 80 kimg (7.7 min)              0.889 / 0.577 / 0.73 / 0.921, 0.88
#   w128 cosine, 200 kimg (8.3 min)                         0.91 / 0.714 / 0.873 / 0.958, 0.74
#   w128 mask 0.5, 280 kimg (9.1 min)                       0.926 / 0.704 / 0.825 / 0.958, 0.67
#   w96 cosine, 300 kimg (8.9 min)                          0.862 / 0.73 / 0.905 / 0.952, 0.94
#   w128 cosine, 200 kimg, lr ramp-down 0.3 (8.9 min)       0.931 / 0.709 / 0.847 / 0.974, 0.80
#     the same, lr 2e-3 (PLAN)                              0.947 / 0.751 / 0.868 / 0.968, 0.85
#       sampled with 14 | 20 | 40 Heun steps                0.958 / 0.788 / 0.915 / 1.0 | 0.947 /
#                                                           0.788 / 0.921 / 1.0 | 0.947 / 0.788
#       20 steps, guidance 2 | 4                            0.958 / 0.772 | 0.921 / 0.772
#     lr 3e-3                                               0.921 / 0.767 / 0.894 / 0.963, 0.79
#   w96 cosine, 280 kimg, ramp-down 0.3, lr 2e-3            0.889 / 0.746 / 0.884 / 0.974, 0.89
# The 260-kimg plan from a fresh clone (2026-12-03, machine_peak "fp32 GEMM 166 ... slow kind;
# factor 1.00"): 16.0 min (MaskDiT 8.4, metrics 2.5), colour 0.980, shape 0.834, size 0.923,
# position 0.996; its snapshot sampled with Heun 14 | 12 | 10 steps (945 samples, guidance 3):
# shape 0.834 | 0.829 | 0.811, all four 0.771 | 0.763 | 0.719. So PLAN samples with 12 steps and
# trains 225 kimg (shape 0.789 at 200, 0.83 at 260): 15.0 and 15.2 min from a fresh clone (README).
# Noise levels (2026-12-03, machine_peak "fp32 GEMM 107-116 ... fwd+bwd 99-124 -> slow kind;
# factor 1.00"; two runs side by side at one thread each on a fresh-clone quickstart's data, VAE,
# CLIP and evaluator; 945 samples, Heun 12, guidance 3; colour / shape / size / position):
#   ln σ ~ N(-1.2, 1.2²) (EDM, the official MaskDiT's), 180 kimg   0.966 / 0.788 / 0.891 / 0.999
#   N(-0.4, 1.0²) (EDM2's for latents), 180 kimg                  0.978 / 0.821 / 0.910 / 0.996,
#                                                                diversity 0.951, coverage 0.914
#     the same, 160 kimg (PLAN)                                   0.970 / 0.821 / 0.905 / 0.997
#   N(0.0, 1.0²), 160 kimg                                        0.980 / 0.802 / 0.904 / 0.996
# The 8x8 latent's object shape is decided at mid-to-high σ, where EDM's pixel-space setting puts
# few of the steps; EDM2's reaches at 160 kimg what EDM's did at 225.
# PLAN from a fresh clone at 35663ab (2026-12-08, machine_peak "fp32 GEMM 347 ... amx True ->
# fast kind; factor 2.20"): 7.7 min (17.0 scaled), colour 0.951, shape 0.786, size 0.870,
# position 0.990, diversity 0.918, coverage 0.941; its snapshot with guidance 2 | 2.5 | 4: shape
# 0.796 | 0.799 | 0.767 (945 samples, so +-0.013): guidance 2-3 are within the noise.
PLAN = MaskDiTQuickstartPlan()
# Seconds, for tests: tiny networks (the VAE keeps factor 4, so the latent shape is the preset's).
SMOKE_PLAN = MaskDiTQuickstartPlan(
    vae_kimg=0.032, vae_batch=16, vae_overrides=("width=8",), kimg=0.032, batch=16,
    tick_kimg=0.032, sample_steps=2,
    overrides=("hidden=32", "depth=1", "heads=2", "decoder_hidden=16", "decoder_depth=1",
               "decoder_heads=2"))

STAGE = FamilyStage(train=_stage, plan=PLAN, smoke_plan=SMOKE_PLAN, kimg_field="kimg",
                    side="langfree.families.maskdit.quickstart:train_vae")
