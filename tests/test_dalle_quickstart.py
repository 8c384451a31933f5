"""``langfree quickstart --family dalle``: the shared stages, then a VQGAN and the DALL·E
transformer language-free (clip prefix) on the image-only split, and the same report fields.
Run through ``run_quickstart`` with a plan smaller than ``--smoke``'s, and a ready (random) CLIP
and a one-epoch evaluator in the outdir, which the quickstart reuses as it would finished
stages; the ``--smoke`` plan itself is checked for what the CLI would pass."""

import dataclasses
import json
from pathlib import Path

import pytest
from PIL import Image

from langfree.data.archive import ImageArchive
from langfree.data.shapes import write_shapes
from langfree.io import write_json
from langfree.metrics.attributes import train_attribute_evaluator
from langfree.quickstart import SMOKE_PLAN, family_stage, run_quickstart
from test_lafite_family_helpers import tiny_small_clip

pytestmark = pytest.mark.usefixtures("one_thread")

MICRO = dataclasses.replace(
    SMOKE_PLAN, clip_images=96, gan_images=64, eval_images=128, evaluator_images=64,
    clip_steps=4, clip_batch=32, clip_holdout=32, attribute_samples=9, r_precision_samples=8,
    fid_samples=16, diversity_samples=16, grid_prompts=2, grid_seeds=2)


def test_dalle_stage_plans_for_the_cli():
    from langfree.families.dalle.quickstart import PLAN
    from langfree.families.dalle.quickstart import SMOKE_PLAN as DALLE_SMOKE

    stage = family_stage("dalle")
    plan, fp = stage.plans(SMOKE_PLAN, None, True, None)
    assert plan == SMOKE_PLAN and fp == DALLE_SMOKE
    _, fp = stage.plans(SMOKE_PLAN, None, False, 12.0)
    assert fp == dataclasses.replace(PLAN, kimg=12.0)  # --kimg sets the transformer's length


def test_quickstart_dalle_micro(tmp_path, capfd):
    from langfree.families.dalle.quickstart import SMOKE_PLAN as DALLE_SMOKE

    out = tmp_path / "qs"
    tiny_small_clip(out / "clip", embed_dim=16, image_size=32)  # stages 2-3 done: reused
    write_json(out / "clip" / "metrics.json", {"paired_cosine": 0.9, "retrieval_top1": 0.0})
    eval_zip = write_shapes(out / "data" / "eval.zip", MICRO.eval_images, 32, seed=2)
    train_attribute_evaluator(eval_zip, out / "evaluator", epochs=1, max_images=64)
    fp = dataclasses.replace(DALLE_SMOKE, vqgan_kimg=0.032, kimg=0.032, tick_kimg=0.032)
    report = run_quickstart(out, MICRO, log=lambda m: None, family="dalle", family_plan=fp)
    assert report["family"] == "dalle"
    for key in ("attribute_accuracy", "attribute_ceiling_real_images", "r_precision", "fid",
                "precision_recall", "diversity", "unprompted_coverage", "bars", "kimg",
                "minutes"):
        assert key in report, key
    d = report["dalle"]
    assert d["condition"] == "clip" and d["rerank"] == 1
    assert d["clip_noise"] == pytest.approx((1 / 0.9 ** 2 - 1) ** 0.5, abs=1e-3)  # from the cos
    assert report["vqgan"]["psnr"] is not None and report["vqgan"]["minutes"] >= 0
    # the VQGAN trained once, in stage 2's second process (the side job), and stage 4 reused it
    assert "second core: the evaluator is done; now langfree.families.dalle.quickstart:" \
        "train_vqgan" in capfd.readouterr().out
    assert len([p for p in (out / "vqgan").iterdir() if p.is_dir()]) == 1
    ceiling = report["vqgan"]["ceiling"]  # the evaluator on the VQGAN's reconstructions
    assert ceiling["images"] == MICRO.eval_images and 0.0 <= ceiling["reconstructed"]["color"] <= 1
    assert report["fid"]["sample_options"]["guidance_scale"] == fp.guidance_scale
    config = json.loads((Path(report["snapshot"]) / "config.json").read_text())
    c = config["config"]
    assert config["family"] == "dalle" and c["condition"] == "clip" and c["tokenizer"] is None
    assert c["clip_noise"] == pytest.approx(d["clip_noise"]) and c["augment_sets"] == 1
    assert Path(c["vqgan"]).is_relative_to(out / "vqgan")
    images = ImageArchive(out / "data" / "gan-images-only.zip")
    assert not any(images.captions(i) for i in range(len(images)))  # trained from images only
    assert not list((out / "data").glob("*.tokenizer-*"))           # no BPE was trained
    grid = Image.open(out / "grid.png")
    assert grid.size == (MICRO.grid_seeds * 32, MICRO.grid_prompts * 32)
