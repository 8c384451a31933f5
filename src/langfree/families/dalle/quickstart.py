"""Stage 4 of ``langfree quickstart --family dalle``: a VQGAN on the image-only split, then the
DALL·E transformer language-free (``condition="clip"``) on the same archive: no captions and no
tokenizer anywhere (clip mode needs none), through the same ``langfree.training.run.train``
calls these commands make:

    langfree train vqgan --data gan-images-only.zip --preset shapes32 --kimg VQGAN_KIMG
    langfree train dalle --data gan-images-only.zip --vqgan VQGAN --encoder CLIP \
        --preset shapes32 --condition clip --clip-noise XI --augment-sets 1 --kimg KIMG

ξ (``--clip-noise``) follows the rule LAFITE's stage uses: h̃ sits as far from the image feature
as this CLIP's held-out captions sit from their images (``noise_for_cosine`` with image weight
1). One code set per image (``augment_sets`` 1): the condition is the embedding of the plain
image, so a crop's codes would teach positions and sizes the condition does not say, and each
extra set is one more VQGAN pass over the whole split. Stages 1-3 and 5-6 (data, CLIP,
evaluator, metrics, grid) are the shared ones of ``langfree.quickstart``.
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
class DalleQuickstartPlan:
    """Sizes of the dalle stage."""

    vqgan_preset: str = "shapes32-quick"
    vqgan_kimg: float = 10.0
    vqgan_batch: int = 8
    preset: str = "shapes32-quick"
    kimg: float = 40.0
    batch: int = 32
    tick_kimg: float = 4.0
    prefix_tokens: int = 4
    augment_sets: int = 1
    overrides: tuple[str, ...] = ()
    vqgan_overrides: tuple[str, ...] = ()
    guidance_scale: float = 3.0   # metrics, grid and previews
    rerank: int = 1               # 1 = off (report.json says which)


def clip_noise(ctx: StageContext) -> dict[str, float]:
    """ξ for this CLIP (``condition_noise``), under the name of the config field it sets."""
    noise = condition_noise(ctx)
    return {"paired_cosine": noise["paired_cosine"], "cosine_used": noise["cosine_used"],
            "clip_noise": noise["xi"]}


def _vqgan_request(out: Path, plan: Any, fp: DalleQuickstartPlan, images_zip: Path):
    from langfree.training.options import TrainOptions
    from langfree.training.run import TrainRequest

    return TrainRequest(
        "vqgan", data=images_zip, preset=fp.vqgan_preset, metrics="none",
        overrides=list(fp.vqgan_overrides),
        options=TrainOptions(outdir=str(out / "vqgan"), kimg=fp.vqgan_kimg,
                             batch=fp.vqgan_batch, tick_kimg=fp.tick_kimg, snap=1000,
                             seed=plan.seed))


def train_vqgan(ctx: SideContext) -> None:
    """The side job: the VQGAN needs no CLIP, so it trains on stage 2's second core."""
    train_once(_vqgan_request(ctx.out, ctx.plan, ctx.family_plan, ctx.images_zip))


def _stage(ctx: StageContext) -> Path:
    from langfree.training.options import TrainOptions
    from langfree.training.run import TrainRequest

    plan, fp = ctx.plan, ctx.family_plan
    noise = clip_noise(ctx)
    ctx.log(f"    captions sit at cosine {noise['paired_cosine']} from their images under this "
            f"CLIP: the clip prefix trains on pseudo text features with ξ {noise['clip_noise']}")
    ctx.stages.start(f"4/6 the VQGAN on {plan.gan_images} images without captions "
                     f"({fp.vqgan_kimg:g} kimg, trained beside the CLIP), then DALL·E "
                     f"language-free on them ({fp.kimg:g} kimg)")
    vqgan = train_once(_vqgan_request(ctx.out, plan, fp, ctx.images_zip))  # reused when done
    t1 = time.time()
    sample = {"guidance_scale": fp.guidance_scale, "rerank": fp.rerank}
    snapshot = train_once(TrainRequest(
        "dalle", data=ctx.images_zip, test_data=ctx.eval_zip, encoder=str(ctx.encoder_dir),
        preset=fp.preset, family_options={
            "vqgan": str(vqgan), "condition": "clip", "prefix_tokens": fp.prefix_tokens,
            "clip_noise": noise["clip_noise"], "augment_sets": fp.augment_sets},
        overrides=list(fp.overrides), metrics="none",
        sample=[f"{k}={v}" for k, v in sample.items()],
        options=TrainOptions(outdir=str(ctx.out / "dalle"), kimg=fp.kimg, batch=fp.batch,
                             tick_kimg=fp.tick_kimg, snap=1000, seed=plan.seed)))
    ctx.sample.update(sample)
    ctx.report.update(dalle={"condition": "clip", "rerank": fp.rerank,
                             "guidance_scale": fp.guidance_scale, **noise},
                      vqgan={**_vqgan_figures(vqgan), "ceiling": _vqgan_ceiling(ctx, vqgan)},
                      dalle_minutes=round((time.time() - t1) / 60, 2))
    return snapshot


def _vqgan_ceiling(ctx: StageContext, snapshot: Path) -> dict[str, Any]:
    """The evaluator on VQGAN reconstructions: the most the transformer's codes can draw."""
    from langfree.checkpoint import load_snapshot

    vq = load_snapshot(snapshot, encoder=None).vqgan.eval()
    return reconstruction_ceiling(ctx, lambda x: vq.decode_codes(vq.encode(x)))


def _vqgan_figures(snapshot: Path) -> dict[str, Any]:
    """The VQGAN run's last tick: reconstruction PSNR and codebook use."""
    return last_tick(snapshot, {"psnr": "Loss/main/psnr", "perplexity": "Loss/main/perplexity",
                                "dead_share": "Loss/main/dead_share"})


# PLAN as measured once (2026-12-02, shared stages 1-3 reused from an earlier outdir, so the
# VQGAN ran alone on the second process; everything on one thread while another engineer's
# jobs held the other core; slow kind, factor 1.00): VQGAN 10 kimg 4.9 min (PSNR 27.3 dB;
# the evaluator on its reconstructions colour 0.87 / shape 0.73 / size 0.87 / position 1.00),
# transformer 40 kimg 11.3 min (CE_image 1.83), metrics 3.9 min. report.json: colour 0.819,
# shape 0.360, size 0.641, position 0.910, diversity 0.92, unprompted coverage 0.84,
# R-precision 0.618: position, diversity and coverage meet their bars, colour and shape do not
# (the VQGAN's reconstructions cap them at 0.87 / 0.73). From a fresh clone on the quiet slow
# kind (factor 1.00): 15.1 min in all (the VQGAN on the second core done at 7.1 min, the
# transformer 5.5 min at 6.6-7.3 s/kimg on two threads, metrics 2.5), the same figures.
PLAN = DalleQuickstartPlan()
SMOKE_PLAN = DalleQuickstartPlan(
    vqgan_kimg=0.064, vqgan_batch=16, kimg=0.064, batch=16, tick_kimg=0.032,
    overrides=("dim=32", "depth=1", "heads=2", "ff_mult=2"),
    vqgan_overrides=("ch=32", "z_channels=32", "n_embed=64", "disc_start=1000000"))

STAGE = FamilyStage(train=_stage, plan=PLAN, smoke_plan=SMOKE_PLAN, kimg_field="kimg",
                    side="langfree.families.dalle.quickstart:train_vqgan")
