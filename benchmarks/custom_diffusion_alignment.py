"""The Custom Diffusion paper's comparison (Kumari et al. 2023, Table 1 / Fig. 7) on shapes, at
equal steps: Custom Diffusion (crossattn_kv), Custom Diffusion (crossattn), textual inversion
(token only) and full UNet fine-tuning, each with its text and image alignment.

It reuses a finished ``langfree quickstart --family custom-diffusion --outdir DIR`` (its base
pipeline that never saw the concept, its small CLIP, its evaluator, the concept's 5 training and
held-out images and the real prior) and trains each method on the one loop through the same
``TrainRequest`` the quickstart's stage makes, differing only in ``--freeze_model`` and the
learning rate. Every method samples the same prompts and seeds.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/custom_diffusion_alignment.py --quickstart DIR

Prints a markdown table; writes DIR/benchmark/alignment.json. Never run as a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

# method -> (freeze_model, learning rate). The paper tunes each method's lr (Custom Diffusion
# 1e-5 x batch, DreamBooth-style fine-tune 5e-6, textual inversion 5e-3 x batch); here each
# keeps the quickstart's ratio to Custom Diffusion: token-only 10x higher, the full UNet 10x lower.
METHODS = {
    "Custom Diffusion (crossattn_kv)": ("crossattn_kv", 1.0),
    "Custom Diffusion (crossattn)": ("crossattn", 1.0),
    "Textual inversion (token only)": ("none", 10.0),
    "Full UNet fine-tune": ("unet", 0.1),
}


def main() -> None:
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from langfree.families.custom_diffusion.family import load_output_dir
    from langfree.families.custom_diffusion.quickstart import (
        PLAN,
        Scorer,
        concept_data,
        concept_request,
    )
    from langfree.families.sd.pipeline import load_pipeline_dir
    from langfree.quickstart import QuickstartPlan, train_once

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quickstart", type=Path, required=True, help="a finished quickstart outdir")
    p.add_argument("--steps", type=int, default=PLAN.steps, help="steps of every method")
    p.add_argument("--lr", type=float, default=PLAN.learning_rate,
                   help="Custom Diffusion's lr (the others scale it, see METHODS)")
    p.add_argument("--eval_seeds", type=int, default=PLAN.eval_seeds)
    args = p.parse_args()

    qs = args.quickstart
    if not (qs / "base" / "model_index.json").is_file() or not (qs / "clip").is_dir():
        raise SystemExit(f"{qs}: run `langfree quickstart --family custom-diffusion --outdir {qs}` "
                         "first (this benchmark reuses its base, CLIP, evaluator and data)")
    plan = QuickstartPlan()
    fp = dataclasses.replace(PLAN, steps=args.steps, eval_seeds=args.eval_seeds)
    data = concept_data(qs, plan, fp)
    bench = qs / "benchmark"
    scorer = Scorer(qs, qs / "clip", plan.resolution, fp, data["heldout"])
    rows = [("Base (plain word, never saw the concept)",
             scorer(load_pipeline_dir(qs / "base"), False, bench / "base.png"), None)]
    for label, (mode, factor) in METHODS.items():
        method_fp = dataclasses.replace(fp, freeze_model=mode,
                                        learning_rate=args.lr * factor)
        t0 = time.time()
        train_once(concept_request(bench, plan, method_fp, qs / "base", data, name=mode))
        seconds = time.time() - t0
        parts, _ = load_output_dir(bench / mode, qs / "base")
        scores = scorer(parts, True, bench / f"{mode}.png")
        scores.update(freeze_model=mode, learning_rate=method_fp.learning_rate,
                      steps=fp.steps, train_seconds=round(seconds, 1))
        rows.append((label, scores, seconds))

    print(f"\nshapes, concept '{fp.concept}' as {fp.token}, {fp.steps} steps each, "
          f"{len(scorer.rows)} samples per method (small CLIP of the quickstart)\n")
    print("| method | text alignment | image alignment | concept drawn (evaluator) | train s |")
    print("|---|---|---|---|---|")
    for label, s, seconds in rows:
        shown = f"{seconds:.0f}" if seconds is not None else "-"
        print(f"| {label} | {s['text_alignment']:.3f} | {s['image_alignment']:.3f} | "
              f"{s['concept_attributes'][fp.concept_attribute]:.2f} | {shown} |")
    print(f"| held-out real images of the concept (reachable image alignment) | - | "
          f"{scorer.reachable:.3f} | - | - |")
    result = {"protocol": scorer.protocol(), "steps": fp.steps,
              "rows": {label: s for label, s, _ in rows}, "heldout_pairs": scorer.reachable}
    bench.mkdir(parents=True, exist_ok=True)
    tmp = bench / ".alignment.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, bench / "alignment.json")


if __name__ == "__main__":
    main()
