"""LAFITE ablation on shapes: which conditioning lets image-only training answer text prompts?

Trains the shapes32 preset for the same kimg under four settings and prints an attribute-accuracy
table (langfree.metrics attribute evaluator, canonical prompts "a large red circle at the top
left") with sample diversity beside it (``diversity``: pixel distance between seeds of one prompt
over that of real images with the prompt's attributes; ``coverage``: share of the background
colours, which no prompt names, among 16 seeds of one prompt), reproducing the paper's claim at
CPU scale:

  gaussian  language-free, LAFITE-G pseudo text features (images only)
  learned   language-free, LAFITE-NN perturbation trained on the CLIP's captioned split
  none      language-free without perturbation (h = image feature)
  standard  real caption features (mixing_prob 0), the upper reference

    python benchmarks/lafite_ablation.py --encoder CLIP_DIR --clip-data CAPTIONED.zip \
        --workdir /tmp/ablation --kimg 20 [--variants gaussian,none] [--set key=value ...] \
        [--evaluator DIR]

The language-free variants train on an archive WITHOUT captions (written here from the same
images), so they cannot read captions even by mistake.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

GAN_SEED, EVAL_SEED = 101, 202
VARIANTS = {
    "gaussian": {},
    "learned": {"conditioning": "learned"},
    "none": {"conditioning": "none"},
    "standard": {"mixing_prob": 0.0},
}


def _write_data(workdir: Path, images: int, eval_images: int, resolution: int) -> tuple[Path, Path, Path]:
    import numpy as np

    from langfree.data.archive import ArchiveWriter, ImageArchive
    from langfree.data.shapes import write_shapes

    captioned = workdir / f"gan-{images}.zip"
    if not captioned.exists():
        write_shapes(captioned, images, resolution, GAN_SEED)
    images_only = workdir / f"gan-{images}-images-only.zip"
    if not images_only.exists():
        src = ImageArchive(captioned)
        with ArchiveWriter(images_only, resolution, source="ablation: captions removed") as w:
            for i in range(len(src)):
                w.add(np.ascontiguousarray(src.image(i)))
    evaluation = workdir / f"eval-{eval_images}.zip"
    if not evaluation.exists():
        write_shapes(evaluation, eval_images, resolution, EVAL_SEED)
    return captioned, images_only, evaluation


def _perturbation(workdir: Path, clip_data: Path, encoder_spec: str, embed_dim: int, steps: int,
                  batch: int = 256) -> Path:
    """LAFITE-NN's perturbation through the call ``langfree train lafite-perturb`` makes, on the
    CLIP's captioned split; returns its final snapshot."""
    from langfree.quickstart import train_once
    from langfree.training.options import TrainOptions
    from langfree.training.run import TrainRequest

    return train_once(TrainRequest(
        "lafite-perturb", data=clip_data, encoder=encoder_spec, metrics="none",
        overrides=[f"hidden={min(1024, 2 * embed_dim)}"],
        options=TrainOptions(outdir=str(workdir / "perturb"), kimg=steps * batch / 1000,
                             batch=batch, tick_kimg=steps * batch / 4000, snap=1000, seed=0)))


def _train(name: str, data: Path, test: Path, args, perturb: Path | None) -> Path:
    """One variant through the same call ``langfree train lafite`` makes; returns the run dir."""
    from langfree.training.options import TrainOptions
    from langfree.training.run import TrainRequest, train

    overrides = [f"{k}={v}" for k, v in VARIANTS[name].items() if k != "mixing_prob"]
    if name == "learned":
        from langfree.families.lafite.perturb import load_perturbation

        _, meta = load_perturbation(perturb)
        overrides += [f"perturb_path={perturb}", f"perturb_hidden={meta['hidden']}",
                      f"perturb_layers={meta['layers']}"]
    request = TrainRequest(
        "lafite", data=data, test_data=test, encoder=args.encoder, preset=args.preset,
        family_options={"mixing_prob": VARIANTS[name].get("mixing_prob", 1.0)},
        overrides=overrides + list(args.set), metrics="none",
        options=TrainOptions(outdir=str(args.workdir / "runs"), kimg=args.kimg, batch=args.batch,
                             tick_kimg=args.tick, snap=1000, seed=args.seed,
                             desc=f"ablation-{name}"))
    return train(request)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", required=True, help="small-CLIP dir (or any encoder spec)")
    p.add_argument("--clip-data", type=Path, help="captioned archive the CLIP was trained on (learned variant)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/lafite_ablation"))
    p.add_argument("--variants", default="gaussian,learned,none,standard")
    p.add_argument("--preset", default="shapes32")
    p.add_argument("--kimg", type=float, default=20.0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--tick", type=float, default=2.0)
    p.add_argument("--images", type=int, default=10000)
    p.add_argument("--eval-images", type=int, default=2000)
    p.add_argument("--perturb-steps", type=int, default=1500)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], help="LafiteConfig override key=value")
    p.add_argument("--evaluator", help="attribute evaluator dir (default: trained beside the eval archive)")
    args = p.parse_args()

    import torch

    from langfree.encoders import load_encoder
    from langfree.families.lafite.config import preset
    from langfree.metrics import evaluate_snapshot

    torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    encoder = load_encoder(args.encoder)
    resolution = preset(args.preset).resolution
    captioned, images_only, evaluation = _write_data(args.workdir, args.images, args.eval_images,
                                                     resolution)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    perturb = None
    if "learned" in variants:
        if args.clip_data is None:
            p.error("the learned variant needs --clip-data (the captioned CLIP training archive)")
        perturb = _perturbation(args.workdir, args.clip_data, args.encoder, encoder.embed_dim,
                               args.perturb_steps)
    rows = {}
    for name in variants:
        start = time.time()
        data = captioned if name == "standard" else images_only
        run = _train(name, data, evaluation, args, perturb)
        minutes = (time.time() - start) / 60
        report = evaluate_snapshot(run, ["attribute_accuracy", "diversity", "unprompted_coverage"],
                                   evaluation, encoder=encoder, evaluator=args.evaluator,
                                   write=False, log=print)
        results = report["results"]
        rows[name] = {"minutes": round(minutes, 2), "run": str(run),
                      **results["attribute_accuracy"],
                      "diversity": results["diversity"].get("value"),
                      "diversity_embedding": results["diversity"].get("embedding_value"),
                      "coverage": results["unprompted_coverage"].get("value")}
        print(json.dumps({name: rows[name]}, default=str))
    _print_table(rows, args)
    (args.workdir / "ablation.json").write_text(json.dumps(rows, indent=1, default=str))


def _print_table(rows: dict, args) -> None:
    keys = ["color", "shape", "size", "position", "overall", "diversity", "coverage"]
    print(f"\nLAFITE ablation: preset {args.preset}, {args.kimg:g} kimg, batch {args.batch}, "
          f"{args.images} training images, attribute accuracy on canonical prompts, diversity "
          "(mean |pixel difference| of seeds / of real images with the prompt's attributes) and "
          "background coverage over 16 seeds")
    print(f"{'variant':<10}" + "".join(f"{k:>10}" for k in keys) + f"{'minutes':>10}")
    for name, row in rows.items():
        cells = []
        for k in keys:
            v = row.get(k)
            cells.append(f"{v:>10.3f}" if isinstance(v, (int, float)) else f"{'-':>10}")
        print(f"{name:<10}" + "".join(cells) + f"{row['minutes']:>10.2f}")


if __name__ == "__main__":
    main()
