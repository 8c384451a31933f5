"""Stage 4 of ``langfree quickstart --family custom-diffusion``: a base Stable-Diffusion-layout
pipeline trained on captioned shapes that never show the concept, then Custom Diffusion on 5
images of it, then the paper's alignment figures for both. The same calls these commands make:

    langfree shapes base.zip --count N --seed 404      (with the concept withheld: no star)
    langfree train sd --data base.zip --preset quick32 --kimg BASE_KIMG   -> DIR/base/
    langfree train custom-diffusion --pretrained_model_name_or_path DIR/base \
        --instance_data_dir DIR/data/concept --instance_prompt "a <new1>" \
        --modifier_token "<new1>" --with_prior_preservation --real_prior \
        --class_data_dir DIR/data/concept-class --max_train_steps STEPS --output_dir DIR/concept

The base needs no CLIP, so it is this family's side job: it trains on stage 2's second core
while the CLIP trains on the first. The prior is real (the paper retrieves captioned real
images): images of the base's own split with their captions. The evaluation (``alignment``)
samples both pipelines from prompts that put the concept under new colours, sizes and positions
(the base reads the concept's plain word, "star", which it never saw drawn), scores them with
the quickstart's small CLIP and the shapes evaluator, and the grid shows the same prompts; the
shared metrics of stage 5 (FID, diversity, ...) are not computed here.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langfree.quickstart import FamilyStage, SideContext, StageContext, last_tick, train_once

BASE_SEED, CONCEPT_SEED = 404, 505  # disjoint from the shared splits (101, 202, 303)


@dataclass(frozen=True)
class CustomDiffusionQuickstartPlan:
    """Sizes of the custom-diffusion stage."""

    concept_attribute: str = "shape"
    concept: str = "star"            # withheld from the base's split
    token: str = "<new1>"
    initializer: str = "ktn"         # the official initializer word
    instance_prompt: str = "a <new1>"
    base_images: int = 10000
    base_preset: str = "quick32"
    base_kimg: float = 20.0          # 625 steps at batch 32 (the first vae_steps train the VAE)
    base_batch: int = 32
    base_overrides: tuple[str, ...] = ()
    instance_images: int = 5
    heldout_images: int = 20         # image alignment's targets (never trained on)
    class_images: int = 100          # real prior: base-split images with their captions
    steps: int = 250
    batch: int = 2
    learning_rate: float = 1e-3
    freeze_model: str = "crossattn_kv"
    eval_prompts: int = 8
    eval_seeds: int = 4
    num_inference_steps: int = 25
    guidance_scale: float = 6.0
    eta: float = 0.0


def _base_request(out: Path, plan: Any, fp: CustomDiffusionQuickstartPlan):
    from langfree.training.options import TrainOptions
    from langfree.training.run import TrainRequest

    return TrainRequest(
        "sd", data=_base_split(out, plan, fp), preset=fp.base_preset, metrics="none",
        overrides=list(fp.base_overrides),
        sample=[f"num_inference_steps={fp.num_inference_steps}"],
        options=TrainOptions(outdir=str(out / "base-run"), kimg=fp.base_kimg,
                             batch=fp.base_batch, tick_kimg=fp.base_kimg / 4, snap=1000,
                             seed=plan.seed))


def _base_split(out: Path, plan: Any, fp: CustomDiffusionQuickstartPlan) -> Path:
    """The base's captioned split: shapes with the concept withheld, each image with its
    canonical caption only ("a large red circle at the top left": one phrasing per attribute
    is what a text encoder trained from scratch learns in a few hundred steps; the prompts of
    the evaluation and the grid are canonical too). Written once, atomically."""
    from langfree.data.archive import ArchiveWriter
    from langfree.data.shapes import draw_one

    dest = out / "data" / f"base-captioned-no-{fp.concept}.zip"
    if dest.exists():
        return dest
    withhold = {fp.concept_attribute: fp.concept}
    extra = {"generator": {"name": "shapes", "seed": BASE_SEED, "withhold": withhold,
                           "captions": "canonical"}}
    with ArchiveWriter(dest, plan.resolution, source="langfree quickstart", extra=extra) as w:
        for i in range(fp.base_images):
            image, captions, attrs = draw_one(BASE_SEED, i, plan.resolution, withhold=withhold)
            w.add(image, captions=captions[:1], source=f"shapes/seed{BASE_SEED}/{i}",
                  attributes=attrs)
    return dest


def train_base(ctx: SideContext) -> None:
    """The side job: the base needs no CLIP, so it trains on stage 2's second core."""
    _export_base(train_once(_base_request(ctx.out, ctx.plan, ctx.family_plan)), ctx.out)


def _export_base(snapshot: Path, out: Path) -> Path:
    """DIR/base: the base snapshot's diffusers-layout export, copied once (atomic rename)."""
    dest = out / "base"
    if not (dest / "model_index.json").is_file():
        tmp = out / ".base.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(snapshot / "export", tmp)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    return dest


def concept_data(out: Path, plan: Any, fp: CustomDiffusionQuickstartPlan) -> dict[str, Path]:
    """Instance images (5 of the concept), held-out images of it, and the real prior's folder
    (images.txt + caption.txt, the official retrieval layout) from the base's split."""
    from langfree.data.archive import ImageArchive
    from langfree.families.custom_diffusion.alignment import concept_images, write_concept_images

    R, a, v = plan.resolution, fp.concept_attribute, fp.concept
    inst = write_concept_images(out / "data" / "concept",
                                concept_images(CONCEPT_SEED, fp.instance_images, R, a, v))
    held = write_concept_images(out / "data" / "concept-heldout", concept_images(
        CONCEPT_SEED, fp.heldout_images, R, a, v, skip=fp.instance_images))
    prior = out / "data" / "concept-class"
    if not (prior / "caption.txt").is_file():
        from PIL import Image

        archive = ImageArchive(_base_split(out, plan, fp))
        tmp = out / "data" / ".concept-class.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "images").mkdir(parents=True)
        n = min(fp.class_images, len(archive))
        pixels = archive.images(range(n))                             # uint8 [n, 3, R, R]
        for i in range(n):
            Image.fromarray(pixels[i].permute(1, 2, 0).numpy()).save(tmp / "images" / f"{i:05d}.png")
        (tmp / "images.txt").write_text("".join(f"images/{i:05d}.png\n" for i in range(n)))
        (tmp / "caption.txt").write_text("".join(archive.captions(i)[0] + "\n" for i in range(n)))
        shutil.rmtree(prior, ignore_errors=True)
        os.replace(tmp, prior)
    return {"instance": inst, "heldout": held, "prior": prior}


def concept_request(out: Path, plan: Any, fp: CustomDiffusionQuickstartPlan, base: Path,
                    data: dict[str, Path], name: str = "concept"):
    """The Custom Diffusion run: output_dir ``out/name``, run dir under ``out/name-run``."""
    from langfree.training.options import TrainOptions
    from langfree.training.run import TrainRequest

    options = {
        "pretrained_model_name_or_path": str(base), "instance_data_dir": str(data["instance"]),
        "instance_prompt": fp.instance_prompt, "modifier_token": fp.token,
        "initializer_token": fp.initializer, "with_prior_preservation": True,
        "real_prior": True, "class_data_dir": str(data["prior"]),
        "num_class_images": fp.class_images, "max_train_steps": fp.steps,
        "train_batch_size": fp.batch, "learning_rate": fp.learning_rate,
        "freeze_model": fp.freeze_model, "output_dir": str(out / name),
        "validation_prompt": _prompts(fp)[0]["prompt"], "seed": plan.seed}
    return TrainRequest(
        "custom-diffusion", preset="tiny", family_options=options, metrics="none",
        sample=[f"{k}={v}" for k, v in _sample(fp).items()],
        options=TrainOptions(outdir=str(out / f"{name}-run"), kimg=fp.steps * fp.batch / 1000,
                             batch=fp.batch, tick_kimg=fp.steps * fp.batch / 4000, snap=1000,
                             seed=plan.seed))


def _sample(fp: CustomDiffusionQuickstartPlan) -> dict[str, Any]:
    return {"num_inference_steps": fp.num_inference_steps, "guidance_scale": fp.guidance_scale,
            "eta": fp.eta}


def _prompts(fp: CustomDiffusionQuickstartPlan) -> list[dict]:
    from langfree.families.custom_diffusion.alignment import concept_prompts

    return concept_prompts(fp.eval_prompts, fp.token, fp.concept, fp.concept_attribute)


def _stage(ctx: StageContext) -> Path:
    plan, fp = ctx.plan, ctx.family_plan
    ctx.stages.start(f"4/6 the base pipeline on {fp.base_images} captioned images without any "
                     f"{fp.concept} ({fp.base_kimg:g} kimg, trained beside the CLIP), then Custom "
                     f"Diffusion ({fp.freeze_model}, {fp.steps} steps) on {fp.instance_images} "
                     f"images of it as {fp.token}, then alignment")
    t0 = time.time()
    base_snapshot = train_once(_base_request(ctx.out, plan, fp))  # reused when the side job ran
    base = _export_base(base_snapshot, ctx.out)
    data = concept_data(ctx.out, plan, fp)
    t1 = time.time()
    snapshot = train_once(concept_request(ctx.out, plan, fp, base, data))
    if not (ctx.out / "concept" / "custom_diffusion_base.json").is_file():  # a reused run
        tmp = ctx.out / ".concept.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(snapshot / "export", tmp)
        shutil.rmtree(ctx.out / "concept", ignore_errors=True)
        os.replace(tmp, ctx.out / "concept")
    t2 = time.time()
    figures = evaluate(ctx, fp, base, ctx.out / "concept", data["heldout"])
    prompts = [p["prompt"] for p in _prompts(fp)]
    ctx.sample.update(_sample(fp))
    ctx.metrics = ()  # the alignment above is this family's evaluation
    ctx.grid_prompts = prompts[:plan.grid_prompts]
    ctx.report.update(
        **figures,
        attribute_accuracy=figures["concept_attributes"]["custom"],
        concept={"attribute": fp.concept_attribute, "value": fp.concept, "token": fp.token,
                 "instance_prompt": fp.instance_prompt, "withheld_from_base": True,
                 "instance_images": fp.instance_images, "heldout_images": fp.heldout_images},
        base=str(base), concept_dir=str(ctx.out / "concept"),
        base_training=_base_figures(base_snapshot),
        concept_minutes=round((t2 - t1) / 60, 2), alignment_minutes=round((time.time() - t2) / 60, 2),
        stage_minutes=round((time.time() - t0) / 60, 2))
    return snapshot


def evaluate(ctx: StageContext, fp: CustomDiffusionQuickstartPlan, base: Path, concept: Path,
             heldout: Path) -> dict[str, Any]:
    """Text and image alignment, and the shapes evaluator's reading, of the base (prompted with
    the plain word) and the personalised pipeline (prompted with the token), on the same seeds;
    the samples go to DIR/alignment/{base,custom}.png (rows prompts, columns seeds)."""
    from langfree.families.custom_diffusion.family import load_output_dir
    from langfree.families.sd.pipeline import load_pipeline_dir

    scorer = Scorer(ctx.out, ctx.encoder_dir, ctx.plan.resolution, fp, heldout)
    out: dict[str, Any] = {"text_alignment": {}, "image_alignment": {}, "concept_attributes": {}}
    for name, parts, token in (("base", load_pipeline_dir(base), False),
                               ("custom", load_output_dir(concept, base)[0], True)):
        scores = scorer(parts, token, ctx.out / "alignment" / f"{name}.png")
        for key in out:
            out[key][name] = scores[key]
    out["image_alignment"]["heldout_pairs"] = scorer.reachable  # real images against each other
    out["alignment_protocol"] = scorer.protocol()
    return out


class Scorer:
    """Samples one pipeline from the concept prompts (``fp.eval_prompts`` x ``fp.eval_seeds``)
    and scores it: text and image alignment with the small CLIP, the evaluator's reading."""

    def __init__(self, out: Path, encoder_dir: Path, resolution: int,
                 fp: CustomDiffusionQuickstartPlan, heldout: Path):
        import torch

        from langfree.encoders import load_encoder
        from langfree.families.custom_diffusion.alignment import self_similarity
        from langfree.families.custom_diffusion.data import image_files, load_square
        from langfree.metrics.attributes import load_attribute_evaluator

        self.fp, self.resolution, self.encoder_dir = fp, resolution, encoder_dir
        self.encoder = load_encoder(str(encoder_dir))
        self.evaluator = load_attribute_evaluator(out / "evaluator")
        self.targets = torch.stack([load_square(p, resolution) for p in image_files(heldout)])
        self.prompts = _prompts(fp)
        self.rows = [p for p in self.prompts for _ in range(fp.eval_seeds)]
        self.seeds = [s for _ in self.prompts for s in range(fp.eval_seeds)]
        self.reachable = self_similarity(self.encoder, self.targets)

    def __call__(self, parts, token: bool, grid: Path | None = None) -> dict[str, Any]:
        """``token``: prompt with the modifier token (else with the plain word)."""
        from langfree.families.custom_diffusion.alignment import alignment, attribute_scores
        from langfree.families.sd.sampler import sample

        o = _sample(self.fp)
        texts = [p["prompt" if token else "plain"] for p in self.rows]
        images = sample(parts, texts, self.seeds, self.resolution, o["num_inference_steps"],
                        o["guidance_scale"], o["eta"])                   # (N, 3, R, R)
        scores = alignment(self.encoder, images, [p["plain"] for p in self.rows], self.targets)
        scores["concept_attributes"] = attribute_scores(self.evaluator, images,
                                                        [p["attrs"] for p in self.rows])
        if grid is not None:
            _save_rows(images, len(self.prompts), grid)
        return scores

    def protocol(self) -> dict[str, Any]:
        return {"encoder": str(self.encoder_dir), "prompts": [p["prompt"] for p in self.prompts],
                "seeds": list(range(self.fp.eval_seeds)), "sample_options": _sample(self.fp),
                "text": "mean cos(image, prompt with the plain word); base prompted with the "
                        "plain word",
                "image": f"mean cos(image, each of {len(self.targets)} held-out concept images)"}


def _save_rows(images, rows: int, path: Path) -> None:
    """[N, 3, R, R] in [-1, 1] -> a PNG grid, ``rows`` rows (atomic)."""
    from PIL import Image

    from langfree.metrics.attributes import to_uint8

    x = to_uint8(images)                                                    # (N, 3, R, R)
    cols = len(x) // rows
    grid = x.view(rows, cols, 3, x.shape[2], x.shape[3]).permute(0, 3, 1, 4, 2)
    grid = grid.reshape(rows * x.shape[2], cols * x.shape[3], 3).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    Image.fromarray(grid).save(tmp)
    os.replace(tmp, path)


def _base_figures(snapshot: Path) -> dict[str, Any]:
    """The base run's last tick: the UNet's ε-MSE, the run's time, and the latent scale."""
    figures = last_tick(snapshot, {"unet_mse": "Loss/main/unet/mse"})
    config = json.loads((snapshot / "config.json").read_text())["config"]
    figures["vae_steps"] = config.get("vae_steps")
    return figures


# PLAN as measured once (2026-12-02, 2-core AMD EPYC at load 4-5 from other jobs): 19.5 min in
# all (CLIP + evaluator 14.2, the base 9.9 on the second core, Custom Diffusion 0.6, alignment
# 0.9). report.json: text alignment base 0.188 / custom 0.128, image alignment 0.038 / 0.034
# (held-out stars against each other: 0.088), stars drawn (evaluator) 0.53 / 0.28: nothing
# learned. Cause: quick32's 150-step VAE (18.8 dB, colours lost); see README "Custom Diffusion".
PLAN = CustomDiffusionQuickstartPlan()
# Seconds, for tests: the "test"-sized base (16 px is refused by nothing, but shapes are drawn at
# the plan's resolution, so the base keeps 32 px with one-block networks).
SMOKE_PLAN = CustomDiffusionQuickstartPlan(
    base_images=64, base_kimg=0.016, base_batch=4, class_images=4, steps=2, batch=1,
    heldout_images=3, eval_prompts=2, eval_seeds=2, num_inference_steps=2,
    base_overrides=("unet_channels=[16,32]", "vae_channels=[16,16,16]", "text_width=16",
                    "text_layers=1", "text_heads=2", "text_ff=32", "vae_steps=2"))

STAGE = FamilyStage(train=_stage, plan=PLAN, smoke_plan=SMOKE_PLAN, kimg_field="base_kimg",
                    side="langfree.families.custom_diffusion.quickstart:train_base")
