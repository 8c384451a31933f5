"""The thesis's claims at CPU scale, one table (never a test): which conditioning lets an
image-only MaskDiT answer text prompts, and does masked training + an unmasked fine-tune beat
unmasked training at equal time?

Every variant trains on the same images for the same kimg (the masked / unmasked pair: the same
time), is sampled with the same options and scored by the same attribute evaluator (canonical
prompts "a large red circle at the top left"), with diversity and background coverage beside:

  sigma1.2   language-free, σ_aug 1.2 (the thesis's, set for pretrained CLIP's modality gap)
  sigma0.6   language-free, σ_aug 0.6
  sigma_clip language-free, σ_aug from this CLIP's caption-image cosine (the quickstart's)
  sigma0     language-free without augmentation (the condition = the image embedding)
  standard   caption embeddings (mixing_prob 0): the paired upper reference
  masked_ft  mask 0.5 (constant) for most of the time, then the unmasked fine-tune
             (``--init-from`` it, mask 0) for ``--finetune`` of the kimg
  unmasked   mask 0 throughout (a plain DiT), for the same training time as masked_ft

It reuses a quickstart outdir (its shapes splits, CLIP, VAE and attribute evaluator), so first

    langfree quickstart --family maskdit --outdir QS
    .venv/bin/python benchmarks/maskdit_ablation.py --quickstart QS --workdir /tmp/maskdit_ablation \
        [--kimg 100] [--variants sigma1.2,sigma0] [--set key=value ...]

The language-free variants train on the quickstart's archive without captions; ``standard``
trains on a captioned copy of the same images (drawn again from the same seed). Equal time for
the masked / unmasked pair comes from a step-time probe of the two configs, alternated in this
run; each row's measured training minutes are printed beside it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SIGMAS = {"sigma1.2": 1.2, "sigma0.6": 0.6, "sigma_clip": None, "sigma0": 0.0}
MASKED = ("mask_schedule=constant", "mask_ratio=0.5")
UNMASKED = ("mask_schedule=constant", "mask_ratio=0.0")
METRICS = ["attribute_accuracy", "diversity", "unprompted_coverage"]


def _captioned_copy(qs: Path, workdir: Path) -> Path:
    """The quickstart's image-only split drawn again with its captions (same seed, same images)."""
    from langfree.data.archive import ImageArchive
    from langfree.quickstart import GAN_SEED, _write_shapes_split

    images = ImageArchive(qs / "data" / "gan-images-only.zip")
    return _write_shapes_split(workdir / "gan-captioned.zip", len(images), images.resolution,
                               GAN_SEED, True)


def _request(args, name: str, data: Path, overrides: list[str], kimg: float, mixing: float,
             init_from: str | None = None, rampdown: float | None = None):
    from langfree.training.options import TrainOptions
    from langfree.training.run import TrainRequest

    return TrainRequest(
        "maskdit", data=data, test_data=args.quickstart / "data" / "eval.zip",
        encoder=str(args.quickstart / "clip"), preset=args.preset,
        family_options={"vae": str(args.vae), "mixing_prob": mixing},
        overrides=overrides + list(args.set), metrics="none",
        options=TrainOptions(outdir=str(args.workdir / "runs" / name), kimg=kimg,
                             batch=args.batch, tick_kimg=args.tick, snap=1000, seed=args.seed,
                             lr_rampdown=args.rampdown if rampdown is None else rampdown,
                             init_from=init_from, desc=f"ablation-{name}"))


def _minutes(snapshot: Path) -> float:
    from langfree.quickstart import last_tick

    return last_tick(snapshot, {})["minutes"]


def step_ratio(args, rounds: int = 3) -> float:
    """Seconds of a masked training step over an unmasked one, for the preset at ``--batch``
    (maskdit_speed's step: network + EDM/MAE loss + backward + the engine's AdamW),
    alternated ``rounds`` times."""
    import dataclasses

    import torch

    from langfree.config import apply_overrides
    from langfree.families.base import adam
    from langfree.families.maskdit.config import MaskDiTConfig, preset
    from langfree.families.maskdit.networks import denoiser_from_config
    from maskdit_speed import step_time  # benchmarks/ is this script's directory

    base = apply_overrides(MaskDiTConfig, dataclasses.asdict(preset(args.preset)), list(args.set))
    torch.manual_seed(0)
    den = denoiser_from_config(base)
    opt = adam(den.parameters(), lr=1e-4)  # the engine's optimiser
    times = {0.5: 0.0, 0.0: 0.0}
    for _ in range(rounds):
        for ratio in times:
            times[ratio] += step_time(den, opt, args.batch, ratio, reps=6)
    return times[0.5] / times[0.0]


def train_variant(args, name: str, images: Path, captioned: Path | None, sigma_clip: float,
                  ratio: float) -> tuple[Path, float, str]:
    """Train one variant; returns (final snapshot, training minutes, what it ran)."""
    from langfree.quickstart import train_once

    if name in SIGMAS:
        sigma = sigma_clip if SIGMAS[name] is None else SIGMAS[name]
        snap = train_once(_request(args, name, images, [f"cond_noise={sigma}"], args.kimg, 1.0))
        return snap, _minutes(snap), f"σ_aug {sigma:g}, {args.kimg:g} kimg"
    if name == "standard":
        snap = train_once(_request(args, name, captioned, [f"cond_noise={sigma_clip}"],
                                   args.kimg, 0.0))
        return snap, _minutes(snap), f"captions, {args.kimg:g} kimg"
    noise = f"cond_noise={sigma_clip}"
    finetune = args.kimg * args.finetune
    if name == "unmasked":
        snap = train_once(_request(args, name, images, [noise, *UNMASKED], args.kimg, 1.0))
        return snap, _minutes(snap), f"mask 0, {args.kimg:g} kimg"
    if name == "masked_ft":
        # the unmasked run's time: (kimg - finetune) unmasked-kimg of time spent masked
        masked_kimg = round((args.kimg - finetune) / ratio, 1)
        first = train_once(_request(args, name, images, [noise, *MASKED], masked_kimg, 1.0,
                                    rampdown=0.0))
        snap = train_once(_request(args, f"{name}-finetune", images, [noise, *UNMASKED],
                                   finetune, 1.0, init_from=str(first)))
        return (snap, _minutes(first) + _minutes(snap),
                f"mask 0.5 {masked_kimg:g} kimg + mask 0 {finetune:g} kimg")
    raise SystemExit(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")


VARIANTS = (*SIGMAS, "standard", "masked_ft", "unmasked")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quickstart", type=Path, required=True,
                   help="a `langfree quickstart --family maskdit` outdir (data, CLIP, VAE, evaluator)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/maskdit_ablation"))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--preset", default="shapes32-quick")
    p.add_argument("--kimg", type=float, default=100.0)
    p.add_argument("--finetune", type=float, default=0.2,
                   help="share of --kimg the masked_ft variant spends in the unmasked fine-tune")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--tick", type=float, default=4.0)
    p.add_argument("--rampdown", type=float, default=0.3, help="lr ramp-down share (as the quickstart)")
    p.add_argument("--samples", type=int, default=189, help="attribute samples (7x9x3 canonical prompts)")
    p.add_argument("--diversity-samples", type=int, default=256)
    p.add_argument("--sample", action="append", default=["steps=14", "guidance_scale=3"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], help="MaskDiTConfig override key=value")
    args = p.parse_args()

    import torch

    from langfree.encoders import load_encoder
    from langfree.metrics import evaluate_snapshot
    from langfree.metrics.attributes import load_attribute_evaluator

    torch.set_num_threads(args.threads)
    qs = args.quickstart
    report_path = qs / "report.json"
    if not report_path.exists():
        p.error(f"--quickstart {qs}: no report.json; run `langfree quickstart --family maskdit "
                f"--outdir {qs}` first")
    report = json.loads(report_path.read_text())
    args.vae = Path(report["vae"]["snapshot"])
    sigma_clip = report["maskdit"]["cond_noise"]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        p.error(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    images = qs / "data" / "gan-images-only.zip"
    captioned = _captioned_copy(qs, args.workdir) if "standard" in variants else None
    ratio = step_ratio(args) if "masked_ft" in variants else 1.0
    if "masked_ft" in variants:
        print(f"masked/unmasked step time at batch {args.batch}: {ratio:.3f}")
    encoder = load_encoder(str(qs / "clip"))
    evaluator = load_attribute_evaluator(qs / "evaluator")
    eval_zip = qs / "data" / "eval.zip"
    rows = {}
    for name in variants:
        snap, minutes, what = train_variant(args, name, images, captioned, sigma_clip, ratio)
        names = [f"attribute_accuracy{args.samples}", f"diversity{args.diversity_samples}",
                 f"unprompted_coverage{args.diversity_samples}"]
        results = evaluate_snapshot(snap, names, eval_zip, encoder=encoder, evaluator=evaluator,
                                    sample=args.sample, write=False, log=print)["results"]
        rows[name] = {"what": what, "minutes": round(minutes, 2), "snapshot": str(snap),
                      **results[names[0]], "diversity": results[names[1]].get("value"),
                      "coverage": results[names[2]].get("value")}
        print(json.dumps({name: rows[name]}, default=str), flush=True)
    _print_table(rows, args, ratio)
    (args.workdir / "ablation.json").write_text(json.dumps(rows, indent=1, default=str))


def _print_table(rows: dict, args, ratio: float) -> None:
    keys = ["color", "shape", "size", "position", "overall", "diversity", "coverage"]
    print(f"\nMaskDiT ablation: preset {args.preset}, batch {args.batch}, {args.samples} attribute "
          f"samples ({', '.join(args.sample)}), diversity / coverage over "
          f"{args.diversity_samples} samples; masked/unmasked step {ratio:.3f}")
    print(f"{'variant':<11}" + "".join(f"{k:>10}" for k in keys) + f"{'minutes':>9}  what")
    for name, row in rows.items():
        cells = [f"{row[k]:>10.3f}" if isinstance(row.get(k), (int, float)) else f"{'-':>10}"
                 for k in keys]
        print(f"{name:<11}" + "".join(cells) + f"{row['minutes']:>9.2f}  {row['what']}")


if __name__ == "__main__":
    main()
