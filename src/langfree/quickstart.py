"""The quickstart: the whole language-free pipeline on the embedded default, on a CPU.

    shapes (3 disjoint seeds) -> small CLIP on captioned split + attribute evaluator on the eval
    split -> FAMILY on the image-only split (no captions anywhere in its archive) -> metrics ->
    report.json + grid.png

Stages 1-3 and 5-6 are the same for every family; stage 4 is the family's ``FamilyStage``
(``STAGES``: family name -> ``"module:attr"``, one line per family, resolved on use). A stage
trains through the same ``langfree.training.run.train`` calls ``langfree train FAMILY`` makes,
so the quickstart exercises the real code path. Each stage reuses its output when it is already
there (a rerun after an interruption picks up where it stopped; families share stages 1-3 in
one outdir).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langfree.io import write_json

# Disjoint seeds: image i of seed s depends only on (s, i), so the three splits never share an image.
CLIP_SEED, GAN_SEED, EVAL_SEED = 101, 202, 303


OFFICIAL_PAIRED_COSINE = 0.25 / math.hypot(0.25, 0.75)  # what the official LAFITE-G noise implies


@dataclass(frozen=True)
class QuickstartPlan:
    """Sizes of the quickstart; the defaults fit ~15 minutes on 2 CPU cores."""

    resolution: int = 32
    clip_images: int = 20000
    gan_images: int = 20000
    eval_images: int = 4000
    evaluator_images: int = 4000    # of the eval split, for training the evaluator (10 % held out)
    clip_steps: int | None = 500       # 300 steps gave retrieval_top1 0.765 here; 400 gave 0.969
    clip_holdout: int = 1000           # held-out pairs for retrieval_top1
    clip_batch: int | None = None      # None: train_small_clip's default
    # Shape accuracy at itc 2: 0.75 at 120 kimg, 0.79 at 150, 0.78 at 180 (one run each; runs
    # spread by a few hundredths), so past 150 kimg more time buys little. itc 6: 0.80 at 150.
    # With shapes32's mode-seeking term and channel_base 512 (issue 9) a step is ~1.5x cheaper,
    # and 96 kimg is what fits the 15-minute bar on a slow-kind 2-core machine.
    gan_kimg: float = 96.0
    gan_batch: int = 32
    tick_kimg: float = 4.0
    attribute_samples: int = 945       # 7 colours x 5 shapes x 3 sizes x 9 positions
    r_precision_samples: int = 1000
    fid_samples: int = 2000            # also precision/recall (pr<N>3) on the same features
    diversity_samples: int = 1024      # 64 canonical prompts x seeds 0-15 (issue 9 bars)
    grid_prompts: int = 8
    grid_seeds: int = 8
    seed: int = 0


SMOKE_PLAN = QuickstartPlan(clip_images=600, gan_images=600, eval_images=1200, evaluator_images=600, clip_steps=10, clip_batch=32, clip_holdout=200,
                            gan_kimg=0.128, gan_batch=16, tick_kimg=0.064, attribute_samples=45, r_precision_samples=32,
                            fid_samples=64, diversity_samples=64, grid_prompts=2, grid_seeds=2)
# What a quickstart must reach (issue 9); report.json says which held.
BARS = {"color": 0.90, "shape": 0.80, "position": 0.80, "diversity": 0.5,
        "unprompted_coverage": 0.75}


@dataclass(frozen=True)
class FamilyStage:
    """Stage 4 of the quickstart for one family: train a generator language-free on the
    image-only split and return the snapshot stages 5-6 evaluate.

    train(ctx: StageContext) -> Path: prints its own stage line (``ctx.stages.start``), may add
        fields to ``ctx.report`` (e.g. its minutes), returns the snapshot directory
    plan / smoke_plan: the family's own sizes (a frozen dataclass), or None when the family's
        sizes are fields of ``QuickstartPlan`` (LAFITE's ``gan_*``)
    kimg_field: the field ``--kimg`` sets (of ``plan`` when there is one, else of
        ``QuickstartPlan``)
    side: "module:attr" of ``side(ctx: SideContext) -> None``, or None: the part of the family's
        training that needs no CLIP (an autoencoder, a base pipeline). It runs in stage 2's
        second process once the attribute evaluator is done, on the core the CLIP leaves free,
        and writes through ``train_once`` into the outdir, so that ``train`` finds the run
        finished and reuses it (calling the same request again).
    """

    train: str | Callable[[StageContext], Path]
    plan: Any = None
    smoke_plan: Any = None
    kimg_field: str = "gan_kimg"
    side: str | None = None

    def plans(self, plan: QuickstartPlan, family_plan: Any, smoke: bool, kimg: float | None
              ) -> tuple[QuickstartPlan, Any]:
        """(QuickstartPlan, family plan) with the family's defaults and ``--kimg`` applied."""
        if family_plan is None:
            family_plan = self.smoke_plan if smoke else self.plan
        if kimg is not None:
            if family_plan is None:
                plan = dataclasses.replace(plan, **{self.kimg_field: kimg})
            else:
                family_plan = dataclasses.replace(family_plan, **{self.kimg_field: kimg})
        return plan, family_plan


@dataclass(frozen=True)
class SideContext:
    """What a family's side job sees (it runs in a spawned process: plain, picklable fields)."""

    out: Path
    plan: QuickstartPlan
    family_plan: Any
    images_zip: Path
    eval_zip: Path


@dataclass
class StageContext:
    """What a family's stage 4 sees: the shared stages' outputs and the plans."""

    out: Path
    plan: QuickstartPlan
    family_plan: Any
    clip_zip: Path          # captioned split (the CLIP's)
    images_zip: Path        # image-only split: what the family trains on
    eval_zip: Path          # eval split (evaluator, metrics, held-out previews)
    encoder_dir: Path       # the small CLIP
    clip_metrics: dict
    stages: Stages
    log: Callable[[str], None]
    evaluator: Any = None   # the attribute evaluator (stage 3)
    report: dict = field(default_factory=dict)  # extra report.json fields from the stage
    sample: dict = field(default_factory=dict)  # sampling options for stages 5-6 ({}: defaults)
    # Shared stage-5 metrics to compute (keys of its ``names``; None: all). A family whose
    # stage evaluates itself (custom-diffusion: alignment against its base) passes () and puts
    # its figures in ``report``; the skipped ones are written as unavailable.
    metrics: tuple[str, ...] | None = None
    grid_prompts: list[str] | None = None  # rows of grid.png (None: the shapes prompt grid)


# Family name -> its FamilyStage ("module:attr"). One line per family.
STAGES = {
    "lafite": "langfree.quickstart:LAFITE_STAGE",
    "maskdit": "langfree.families.maskdit.quickstart:STAGE",
    "dalle": "langfree.families.dalle.quickstart:STAGE",
    "custom-diffusion": "langfree.families.custom_diffusion.quickstart:STAGE",
}


def family_stage(name: str) -> FamilyStage:
    from langfree.families.spec import resolve

    if name not in STAGES:
        raise ValueError(f"no quickstart for family {name!r}; families with one: "
                         f"{', '.join(sorted(STAGES))}")
    return resolve(STAGES[name])


def train_once(request: Any) -> Path:
    """``langfree.training.run.train(request)`` unless a finished run (``done.json``) is in its
    outdir already; returns the final snapshot. For family stages."""
    from langfree.checkpoint import list_snapshots
    from langfree.training.run import train

    outdir = Path(request.options.outdir)
    runs = sorted(p for p in outdir.glob("*") if p.is_dir()) if outdir.exists() else []
    for run in reversed(runs):
        done = run / "done.json"
        if done.exists():
            return Path(json.loads(done.read_text())["snapshot"])
    run_dir = train(request)
    snapshot = list_snapshots(run_dir)[-1]
    write_json(run_dir / "done.json", {"snapshot": str(snapshot)})
    return snapshot


def last_tick(snapshot: Path, keys: dict[str, str]) -> dict[str, Any]:
    """Figures of the last tick of ``snapshot``'s run: {name: stats.jsonl[key]} plus the snapshot
    path and the run's training minutes (e.g. an autoencoder stage's PSNR). For family stages."""
    stats = (snapshot.parent.parent / "stats.jsonl").read_text().splitlines()
    last = json.loads(stats[-1]) if stats else {}
    return {"snapshot": str(snapshot), **{k: last.get(v) for k, v in keys.items()},
            "minutes": round((last.get("Progress/time") or 0.0) / 60, 2)}


def reconstruction_ceiling(ctx: StageContext, reconstruct: Callable[[Any], Any],
                           count: int = 1000, batch: int = 200) -> dict[str, Any]:
    """Attribute accuracy of an autoencoder's reconstructions of ``count`` eval images, beside
    the same images' own: what a generator in that latent space can score at best (a latent
    family's attributes cannot beat it). ``reconstruct``: float [B, 3, R, R] in [-1, 1] -> the
    same. For the stages of latent families (dalle's VQGAN, maskdit's VAE)."""
    import torch

    from langfree.data.archive import ImageArchive
    from langfree.metrics.attributes import _labels, to_uint8

    archive = ImageArchive(ctx.eval_zip)
    indices = list(range(min(count, len(archive))))
    real = archive.images(indices)  # uint8 [N, 3, R, R]
    with torch.no_grad():
        rec = torch.cat([to_uint8(reconstruct(real[i:i + batch].float() / 127.5 - 1.0))
                         for i in range(0, len(real), batch)])
    labels = _labels(archive, indices, ctx.evaluator.attributes)
    mse = ((rec.float() - real.float()) / 127.5).square().mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return {"images": len(indices), "psnr": round(float((10 * torch.log10(4.0 / mse)).mean()), 2),
            "reconstructed": {k: round(v, 4) for k, v in ctx.evaluator.accuracy(rec, labels).items()},
            "real": {k: round(v, 4) for k, v in ctx.evaluator.accuracy(real, labels).items()}}


class Stages:
    """Prints one line per stage with its duration; everything else prints its own progress."""

    def __init__(self, log: Callable[[str], None] = print) -> None:
        self.log, self.t0 = log, time.time()

    def start(self, text: str) -> float:
        self.log(f"[quickstart {self.minutes():5.1f} min] {text}")
        return time.time()

    def minutes(self) -> float:
        return (time.time() - self.t0) / 60


def _write_shapes_split(dest: Path, count: int, resolution: int, seed: int, captions: bool) -> Path:
    """A shapes archive; ``captions=False`` writes the images and their ground truth only, so the
    generator's archive holds nothing a language model could read."""
    from tqdm.auto import tqdm

    from langfree.data.archive import ArchiveWriter
    from langfree.data.shapes import draw_one

    if dest.exists():
        return dest
    extra = {"generator": {"name": "shapes", "seed": seed, "captions": captions}}
    with ArchiveWriter(dest, resolution, source="langfree quickstart", extra=extra) as writer:
        for i in tqdm(range(count), desc=f"draw {dest.name}", unit="img", mininterval=1.0):
            image, caps, attrs = draw_one(seed, i, resolution)
            writer.add(image, captions=caps if captions else (), source=f"shapes/seed{seed}/{i}",
                       attributes=attrs)
    return dest


def _train_clip(archive: Path, outdir: Path, plan: QuickstartPlan) -> dict:
    from langfree.encoders.small_clip import train_small_clip

    metrics_path = outdir / "metrics.json"
    if metrics_path.exists() and (outdir / "encoder.json").exists():
        return json.loads(metrics_path.read_text())
    kwargs = {k: v for k, v in (("steps", plan.clip_steps), ("batch", plan.clip_batch)) if v is not None}
    return train_small_clip(archive, outdir, seed=plan.seed, holdout=plan.clip_holdout, **kwargs)


def _pseudo_text_noise(clip_dir: Path, clip_zip: Path, clip_metrics: dict, plan: QuickstartPlan
                       ) -> dict:
    """LAFITE-G's noise level for this CLIP: h̃ sits as far from the image feature as the CLIP's
    held-out captions sit from their images (``pseudo_text.noise_for_cosine``)."""
    from langfree.encoders.pseudo_text import noise_for_cosine
    from langfree.families.lafite.config import preset

    cos = clip_metrics.get("paired_cosine")
    if cos is None:  # an encoder directory written before the cosine was recorded
        from langfree.data.archive import ImageArchive
        from langfree.encoders import load_encoder
        from langfree.encoders.small_clip import _split, retrieval_metrics

        archive = ImageArchive(clip_zip)
        _, held_out = _split(len(archive), plan.clip_holdout, plan.seed)
        cos = retrieval_metrics(load_encoder(str(clip_dir)), archive, held_out)["paired_cosine"]
    weight = preset(f"shapes{plan.resolution}").image_weight
    # Kept within [the official setting's 0.32, 0.999]: a CLIP whose captions sit farther from
    # their images than pretrained CLIP's is untrained (the smoke plan's 10 steps).
    used = min(max(cos, OFFICIAL_PAIRED_COSINE), 0.999)
    return {"paired_cosine": round(cos, 4), "cosine_used": round(used, 4), "image_weight": weight,
            "image_noise": round(noise_for_cosine(used, weight), 4)}


def condition_noise(ctx: StageContext) -> dict[str, float]:
    """ξ for this CLIP by the rule of LAFITE's stage (its image_noise / image_weight): the noise,
    relative to a unit image embedding, that puts a pseudo text feature as far from its image
    as the CLIP's held-out captions sit. For the stages of families that perturb a unit image
    embedding themselves (dalle's clip prefix, maskdit's σ_aug)."""
    pseudo = _pseudo_text_noise(ctx.encoder_dir, ctx.clip_zip, ctx.clip_metrics, ctx.plan)
    return {"paired_cosine": pseudo["paired_cosine"], "cosine_used": pseudo["cosine_used"],
            "xi": round(pseudo["image_noise"] / pseudo["image_weight"], 4)}


def _second_core(eval_zip: str, evaluator_dir: str, seed: int, max_images: int,
                 side: str | None, side_ctx: SideContext | None) -> None:
    """Stage 2's second process, one thread: the attribute evaluator, then the family's side job."""
    import torch

    from langfree.families.spec import resolve
    from langfree.metrics.attributes import train_attribute_evaluator

    torch.set_num_threads(1)
    if not (Path(evaluator_dir) / "evaluator.json").exists():
        train_attribute_evaluator(eval_zip, evaluator_dir, seed=seed, max_images=max_images,
                                  log=lambda m: print(f"    {m}", flush=True))
    if side is not None:
        print(f"    second core: the evaluator is done; now {side}", flush=True)
        resolve(side)(side_ctx)


def _start_second_core(eval_zip: Path, evaluator_dir: Path, plan: QuickstartPlan,
                       side: str | None = None, side_ctx: SideContext | None = None):
    """Train the shapes evaluator (then the family's side job) in a separate process (spawned:
    no torch state shared) so it runs on the second core while the CLIP trains on the first.
    None when there is nothing to do."""
    import multiprocessing

    if side is None and (evaluator_dir / "evaluator.json").exists():
        return None
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_second_core, name="attribute-evaluator",
                       args=(str(eval_zip), str(evaluator_dir), plan.seed, plan.evaluator_images,
                             side, side_ctx))
    proc.start()
    return proc


def _train_lafite(data: Path, test: Path, encoder_dir: Path, outdir: Path, plan: QuickstartPlan,
                  image_noise: float) -> Path:
    """Language-free LAFITE through the same call ``langfree train lafite`` makes; returns the
    final snapshot."""
    from langfree.training.options import TrainOptions
    from langfree.training.run import TrainRequest

    return train_once(TrainRequest(
        "lafite", data=data, test_data=test, encoder=str(encoder_dir),
        preset=f"shapes{plan.resolution}", family_options={"mixing_prob": 1.0},
        overrides=[f"image_noise={image_noise}"], metrics="none",
        options=TrainOptions(outdir=str(outdir), kimg=plan.gan_kimg, batch=plan.gan_batch,
                             tick_kimg=plan.tick_kimg, snap=1000, seed=plan.seed)))


def _lafite_stage(ctx: StageContext) -> Path:
    plan = ctx.plan
    pseudo = _pseudo_text_noise(ctx.encoder_dir, ctx.clip_zip, ctx.clip_metrics, plan)
    ctx.log(f"    captions sit at cosine {pseudo['paired_cosine']} from their images under this CLIP: "
            f"pseudo text features use image_noise {pseudo['image_noise']}")
    ctx.stages.start(f"4/6 training LAFITE language-free on {plan.gan_images} images without captions "
                     f"({plan.gan_kimg:g} kimg)")
    t_gan = time.time()
    snapshot = _train_lafite(ctx.images_zip, ctx.eval_zip, ctx.encoder_dir, ctx.out / "runs", plan,
                             pseudo["image_noise"])
    ctx.report.update(pseudo_text=pseudo, gan_minutes=round((time.time() - t_gan) / 60, 2))
    return snapshot


LAFITE_STAGE = FamilyStage(train=_lafite_stage)


def _grid(family, encoder, snapshot: Path, outdir: Path, plan: QuickstartPlan,
          options: Any = None, prompts: list[str] | None = None) -> Path:
    from langfree.data.shapes import prompt_grid
    from langfree.sampling.conditions import build_conditions
    from langfree.sampling.generate import generate_grid, write_outputs

    prompts = prompts or [p for p, _ in prompt_grid(plan.grid_prompts)]
    seeds = list(range(plan.grid_seeds))
    conditions = build_conditions(encoder, prompts)
    options = options if options is not None else family.SampleOptions()
    images = generate_grid(family, conditions, seeds, options)
    write_outputs(images, conditions, seeds, outdir / "samples", family=family.name,
                  snapshot=str(snapshot), options=options)
    os.replace(outdir / "samples" / "grid.png", outdir / "grid.png")
    return outdir / "grid.png"


def run_quickstart(outdir: str | os.PathLike, plan: QuickstartPlan = QuickstartPlan(),
                   log: Callable[[str], None] = print, family: str = "lafite",
                   family_plan: Any = None) -> dict:
    """Run every stage with ``family``'s stage 4 (``family_plan``: its sizes, default the
    stage's ``plan``); returns the report (also written to ``outdir/report.json``)."""
    import torch

    from langfree.checkpoint import load_snapshot
    from langfree.encoders import load_encoder
    from langfree.families.base import sample_batch
    from langfree.families.spec import resolve
    from langfree.metrics import compute_metrics
    from langfree.metrics.attributes import (
        load_attribute_evaluator,
    )
    from langfree.sampling.conditions import options_dict, parse_sample_options

    stage = family_stage(family)
    if family_plan is None:
        family_plan = stage.plan
    out = Path(outdir)
    (out / "data").mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    stages = Stages(log)
    R = plan.resolution

    stages.start(f"1/6 drawing shapes: captioned split (CLIP), image-only split ({family}), eval split")
    clip_zip = _write_shapes_split(out / "data" / "clip-captioned.zip", plan.clip_images, R, CLIP_SEED, True)
    gan_zip = _write_shapes_split(out / "data" / "gan-images-only.zip", plan.gan_images, R, GAN_SEED, False)
    eval_zip = _write_shapes_split(out / "data" / "eval.zip", plan.eval_images, R, EVAL_SEED, True)

    side = f" and then {stage.side.rsplit(':', 1)[-1]}" if stage.side else ""
    stages.start("2/6 training the small CLIP on the captioned split, and (in a second process, "
                 f"one core each) the attribute evaluator on the eval split{side}")
    evaluator_dir = out / "evaluator"
    worker = _start_second_core(eval_zip, evaluator_dir, plan, stage.side, SideContext(
        out=out, plan=plan, family_plan=family_plan, images_zip=gan_zip, eval_zip=eval_zip))
    torch.set_num_threads(1)
    try:
        clip_metrics = _train_clip(clip_zip, out / "clip", plan)
    finally:
        torch.set_num_threads(threads)
    log(f"    CLIP retrieval_top1 {clip_metrics.get('retrieval_top1')}")
    stages.start("3/6 waiting for the attribute evaluator (its accuracy on held-out real images is "
                 f"the ceiling){side}")
    if worker is not None:
        worker.join()
        if worker.exitcode != 0:
            raise RuntimeError(f"the second core's work (attribute evaluator{side}) failed "
                               f"(exit {worker.exitcode}); see above")
    evaluator = load_attribute_evaluator(evaluator_dir)
    ceiling = evaluator.ceiling
    log("    evaluator ceiling " + "  ".join(f"{k} {v:.3f}" for k, v in ceiling.items()))

    ctx = StageContext(out=out, plan=plan, family_plan=family_plan, clip_zip=clip_zip,
                       images_zip=gan_zip, eval_zip=eval_zip, encoder_dir=out / "clip",
                       clip_metrics=clip_metrics, stages=stages, log=log, evaluator=evaluator)
    snapshot = resolve(stage.train)(ctx)

    stages.start("5/6 evaluating: " + ("attribute accuracy, R-precision, FID, precision/recall, "
                                       "diversity and unprompted coverage" if ctx.metrics is None
                                       else ", ".join(ctx.metrics) or "nothing more (the family "
                                       "stage reported its own figures)"))
    encoder = load_encoder(str(out / "clip"))
    model = load_snapshot(snapshot, encoder=encoder)
    names = {"attributes": f"attribute_accuracy{plan.attribute_samples}",
             "r_precision": f"r_precision{plan.r_precision_samples}",
             "fid": f"fid{plan.fid_samples}_full",
             "pr": f"pr{plan.fid_samples}3",
             "diversity": f"diversity{plan.diversity_samples}",
             "unprompted_coverage": f"unprompted_coverage{plan.diversity_samples}"}
    if ctx.metrics is not None:  # the family's stage chose (e.g. it evaluated itself)
        names = {k: v for k, v in names.items() if k in ctx.metrics}
    options = parse_sample_options(model, dict(ctx.sample))  # {} = the family's defaults

    def generate(conditions, seeds):
        return model.sample(conditions, seeds, options)

    results = compute_metrics(list(names.values()), generate, encoder, eval_zip,
                              evaluator=evaluator, seed=plan.seed,
                              batch=sample_batch(model)) if names else {}
    for result in results.values():
        result["sample_options"] = options_dict(options)
    skipped = {"value": None, "available": False,
               "reason": f"not computed for family {family} (its stage reports its own figures)"}
    results.update({f"_{k}": dict(skipped) for k in ("attributes", "r_precision", "fid", "pr",
                                                      "diversity", "unprompted_coverage")})
    names = {k: names.get(k, f"_{k}") for k in ("attributes", "r_precision", "fid", "pr",
                                                "diversity", "unprompted_coverage")}

    stages.start("6/6 drawing grid.png from prompts")
    grid = _grid(model, encoder, snapshot, out, plan, options, ctx.grid_prompts)

    manifest = json.loads((snapshot / "manifest.json").read_text())
    acc = results[names["attributes"]]
    report = {
        "attribute_accuracy": {k: acc.get(k) for k in ("color", "shape", "size", "position", "overall")},
        "attribute_ceiling_real_images": ceiling,
        "r_precision": results[names["r_precision"]],
        "fid": results[names["fid"]],
        "precision_recall": results[names["pr"]],
        "diversity": _brief(results[names["diversity"]]),
        "unprompted_coverage": results[names["unprompted_coverage"]],
        "clip": clip_metrics,
        **ctx.report,
        "family": family,
        "kimg": manifest.get("kimg"),
        "minutes": round(stages.minutes(), 2),
        "snapshot": str(snapshot),
        "grid": str(grid),
        "plan": plan.__dict__,
    }
    if family_plan is not None:
        report["family_plan"] = dataclasses.asdict(family_plan)
    figures = {**report["attribute_accuracy"], "diversity": report["diversity"].get("value"),
               "unprompted_coverage": report["unprompted_coverage"].get("value")}
    report["bars"] = {k: {"bar": bar, "value": figures.get(k),
                          "held": figures.get(k) is not None and figures[k] >= bar}
                      for k, bar in BARS.items()}
    write_json(out / "report.json", report)
    return report


def _brief(result: dict) -> dict:
    """The diversity result without its per-prompt list (kept short for report.json)."""
    return {k: v for k, v in result.items() if k != "per_prompt"}
