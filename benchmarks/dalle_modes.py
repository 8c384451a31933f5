"""DALL·E on shapes: text tokens against the language-free CLIP prefix, with and without
classifier-free guidance and CLIP reranking (issue 14 §5).

Both modes train the same transformer preset for the same kimg on the same VQGAN codes of the same
images: ``text`` reads the images' captions as BPE tokens (a tokenizer trained on them here), ``clip``
never sees a caption (the archive it trains on has them removed) and is conditioned on pseudo text
features of the image embedding. Each snapshot is then scored under every sampling setting on the
same canonical prompts: attribute accuracy (the shapes evaluator), diversity (seed distance over
that of real images with the prompt's attributes) and unprompted coverage (background colours
among 16 seeds of one prompt), plus the evaluator on the VQGAN's own reconstructions, which no
mode can beat.

    python benchmarks/dalle_modes.py --encoder CLIP_DIR --evaluator EVAL_DIR \
        --data CAPTIONED.zip --eval EVAL.zip --vqgan VQGAN_SNAPSHOT --workdir /tmp/dalle_modes \
        [--kimg 40] [--preset shapes32-quick] [--clip-noise 0.337] [--settings 1:1,3:1,3:4]

``--settings`` lists guidance_scale:rerank pairs (rerank N = the best of N candidates by the
encoder's text-image similarity).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _images_only(captioned: Path, workdir: Path) -> Path:
    import numpy as np

    from langfree.data.archive import ArchiveWriter, ImageArchive

    out = workdir / f"{captioned.stem}-images-only.zip"
    if not out.exists():
        src = ImageArchive(captioned)
        with ArchiveWriter(out, src.resolution, source="dalle_modes: captions removed") as w:
            for i in range(len(src)):
                w.add(np.ascontiguousarray(src.image(i)))
    return out


def _train(mode: str, data: Path, args) -> Path:
    """One mode through the call ``langfree train dalle`` makes; returns the final snapshot."""
    from langfree.quickstart import train_once
    from langfree.training.options import TrainOptions
    from langfree.training.run import TrainRequest

    family_options = {"vqgan": args.vqgan, "condition": mode, "augment_sets": 1}
    if mode == "clip":
        family_options.update(prefix_tokens=args.prefix_tokens, clip_noise=args.clip_noise)
    return train_once(TrainRequest(
        "dalle", data=data, test_data=args.eval, encoder=args.encoder, preset=args.preset,
        family_options=family_options, overrides=list(args.set), metrics="none",
        options=TrainOptions(outdir=str(args.workdir / mode), kimg=args.kimg, batch=args.batch,
                             tick_kimg=args.tick, snap=1000, seed=args.seed)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", required=True, help="small-CLIP dir (or any encoder spec)")
    p.add_argument("--evaluator", required=True, help="attribute evaluator dir")
    p.add_argument("--data", type=Path, required=True, help="captioned shapes archive")
    p.add_argument("--eval", type=Path, required=True, help="captioned eval archive")
    p.add_argument("--vqgan", required=True, help="VQGAN snapshot (langfree train vqgan)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/dalle_modes"))
    p.add_argument("--modes", default="clip,text")
    p.add_argument("--preset", default="shapes32-quick")
    p.add_argument("--kimg", type=float, default=40.0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--tick", type=float, default=4.0)
    p.add_argument("--prefix-tokens", type=int, default=4)
    p.add_argument("--clip-noise", type=float, default=0.337,
                   help="ξ of the clip mode's pseudo text features (the quickstart's rule)")
    p.add_argument("--settings", default="1:1,3:1,3:4", help="guidance_scale:rerank pairs")
    p.add_argument("--attribute-samples", type=int, default=945)
    p.add_argument("--diversity-samples", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], help="DalleConfig override key=value")
    args = p.parse_args()

    import torch

    from langfree.checkpoint import load_snapshot
    from langfree.encoders import load_encoder
    from langfree.metrics import evaluate_snapshot
    from langfree.metrics.attributes import load_attribute_evaluator
    from langfree.quickstart import StageContext, reconstruction_ceiling

    torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    encoder, evaluator = load_encoder(args.encoder), load_attribute_evaluator(args.evaluator)
    ctx = StageContext(out=args.workdir, plan=None, family_plan=None, clip_zip=args.data,
                       images_zip=args.data, eval_zip=args.eval, encoder_dir=Path(args.encoder),
                       clip_metrics={}, stages=None, log=print, evaluator=evaluator)
    vq = load_snapshot(args.vqgan, encoder=None).vqgan.eval()
    ceiling = reconstruction_ceiling(ctx, lambda x: vq.decode_codes(vq.encode(x)))
    print(json.dumps({"vqgan_ceiling": ceiling}))
    names = [f"attribute_accuracy{args.attribute_samples}",
             f"diversity{args.diversity_samples}", f"unprompted_coverage{args.diversity_samples}"]
    rows = []
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        start = time.time()
        data = _images_only(args.data, args.workdir) if mode == "clip" else args.data
        snapshot = _train(mode, data, args)
        minutes = (time.time() - start) / 60
        for setting in args.settings.split(","):
            guidance, rerank = setting.split(":")
            t0 = time.time()
            report = evaluate_snapshot(snapshot, names, args.eval, encoder=encoder,
                                       evaluator=evaluator, write=False,
                                       sample={"guidance_scale": float(guidance),
                                               "rerank": int(rerank)})
            res = report["results"]
            acc = res[names[0]]
            row = {"mode": mode, "guidance": float(guidance), "rerank": int(rerank),
                   **{k: acc[k] for k in ("color", "shape", "size", "position", "overall")},
                   "diversity": res[names[1]]["value"], "coverage": res[names[2]]["value"],
                   "train_minutes": round(minutes, 2),
                   "eval_minutes": round((time.time() - t0) / 60, 2), "snapshot": str(snapshot)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    _print_table(rows, ceiling, args)
    (args.workdir / "dalle_modes.json").write_text(
        json.dumps({"vqgan_ceiling": ceiling, "rows": rows}, indent=1))


def _print_table(rows: list[dict], ceiling: dict, args) -> None:
    keys = ["color", "shape", "size", "position", "overall", "diversity", "coverage"]
    print(f"\nDALL·E modes: preset {args.preset}, {args.kimg:g} kimg, batch {args.batch}; "
          "attribute accuracy on canonical prompts, diversity and background coverage over seeds")
    print(f"{'mode':<6}{'guid.':>6}{'rerank':>7}" + "".join(f"{k:>10}" for k in keys))
    for row in rows:
        print(f"{row['mode']:<6}{row['guidance']:>6g}{row['rerank']:>7}"
              + "".join(f"{row[k]:>10.3f}" for k in keys))
    rec = ceiling["reconstructed"]
    print(f"{'VQGAN reconstructions':<19}" + "".join(
        f"{rec[k]:>10.3f}" if k in rec else f"{'-':>10}" for k in keys))


if __name__ == "__main__":
    main()
