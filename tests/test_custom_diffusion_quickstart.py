"""``langfree quickstart --family custom-diffusion`` at micro size: the base trains on a split
without the concept and loads in plain diffusers, Custom Diffusion writes the seed's files, and
report.json holds alignment figures computed from the two pipelines' samples. A ready (random)
CLIP and a one-epoch evaluator in the outdir are reused as finished stages 2-3."""

import dataclasses
import json

import pytest
import torch
from PIL import Image

from langfree.data.archive import ImageArchive
from langfree.data.shapes import write_shapes
from langfree.io import write_json
from langfree.metrics.attributes import train_attribute_evaluator
from langfree.quickstart import SMOKE_PLAN, family_stage, run_quickstart
from test_lafite_family_helpers import tiny_small_clip

pytestmark = pytest.mark.usefixtures("one_thread")

MICRO = dataclasses.replace(
    SMOKE_PLAN, clip_images=96, gan_images=32, eval_images=128, evaluator_images=64,
    clip_steps=4, clip_batch=32, clip_holdout=32, grid_prompts=2, grid_seeds=2)


def test_stage_plans_for_the_cli():
    from langfree.families.custom_diffusion.quickstart import PLAN
    from langfree.families.custom_diffusion.quickstart import SMOKE_PLAN as CD_SMOKE

    stage = family_stage("custom-diffusion")
    assert stage.plans(SMOKE_PLAN, None, True, None)[1] == CD_SMOKE
    _, fp = stage.plans(SMOKE_PLAN, None, False, 8.0)
    assert fp == dataclasses.replace(PLAN, base_kimg=8.0)  # --kimg sets the base's length


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    from langfree.families.custom_diffusion.quickstart import SMOKE_PLAN as CD_SMOKE

    out = tmp_path_factory.mktemp("cdqs") / "qs"
    tiny_small_clip(out / "clip", embed_dim=16, image_size=32)  # stages 2-3 done: reused
    write_json(out / "clip" / "metrics.json", {"paired_cosine": 0.9, "retrieval_top1": 0.0})
    eval_zip = write_shapes(out / "data" / "eval.zip", MICRO.eval_images, 32, seed=2)
    train_attribute_evaluator(eval_zip, out / "evaluator", epochs=1, max_images=64)
    report = run_quickstart(out, MICRO, log=lambda m: None, family="custom-diffusion",
                            family_plan=CD_SMOKE)
    return out, report, CD_SMOKE


def test_files_base_and_concept(micro):
    from diffusers import StableDiffusionPipeline

    out, report, fp = micro
    base = ImageArchive(next((out / "data").glob("base-captioned-no-*.zip")))
    shapes = {base.attributes(i)["shape"] for i in range(len(base))}
    assert fp.concept not in shapes and len(shapes) == 4       # the base never sees a star
    pipe = StableDiffusionPipeline.from_pretrained(out / "base", local_files_only=True)
    assert len(pipe.tokenizer) == 49408
    assert (out / "concept" / "pytorch_custom_diffusion_weights.safetensors").is_file()
    assert (out / "concept" / f"{fp.token}.safetensors").is_file()
    assert len(list((out / "data" / "concept").glob("*.png"))) == fp.instance_images
    grid = Image.open(out / "grid.png")
    assert grid.size == (MICRO.grid_seeds * 32, MICRO.grid_prompts * 32)
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))


def test_report_alignment_is_computed(micro):
    out, report, fp = micro
    assert report["family"] == "custom-diffusion"
    for key in ("text_alignment", "image_alignment"):
        for who in ("base", "custom"):
            value = report[key][who]
            assert isinstance(value, float) and -1.0 <= value <= 1.0, (key, who, value)
    # base and personalised pipelines drew different images from their prompts
    base = Image.open(out / "alignment" / "base.png")
    custom = Image.open(out / "alignment" / "custom.png")
    assert base.size == custom.size == (fp.eval_seeds * 32, fp.eval_prompts * 32)
    assert base.tobytes() != custom.tobytes()
    assert report["image_alignment"] != {"base": report["image_alignment"]["custom"]}
    acc = report["concept_attributes"]["custom"]
    assert set(acc) == {"shape", "color", "size", "position", "overall"}
    assert report["attribute_accuracy"] == acc
    assert all(0.0 <= v <= 1.0 for v in acc.values())
    assert report["fid"]["available"] is False                  # not computed for this family
    assert report["alignment_protocol"]["prompts"][0].count(fp.token) == 1


def test_alignment_scores_what_it_says():
    from langfree.families.custom_diffusion.alignment import alignment, self_similarity

    class Axis:  # unit embeddings: images by their mean red, texts by a table
        def encode_image(self, x):
            r = x[:, 0].mean((1, 2))
            return torch.stack([r, (1 - r ** 2).clamp(min=0).sqrt()], 1)

        def encode_text(self, texts):
            return torch.tensor([[1.0, 0.0] if "red" in t else [0.0, 1.0] for t in texts])

    red, black = torch.ones(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)
    s = alignment(Axis(), torch.cat([red, black]), ["red", "red"], torch.cat([red, red]))
    assert s["text_alignment"] == pytest.approx(0.5)   # cos 1 and cos 0
    assert s["image_alignment"] == pytest.approx(0.5)
    assert self_similarity(Axis(), torch.cat([red, black, red])) == pytest.approx(1 / 3, abs=1e-4)


def test_withhold_removes_a_value_and_keeps_other_draws():
    from langfree.data.shapes import draw_one

    for i in range(120):
        image, caps, attrs = draw_one(9, i, 32, 0.5, withhold={"shape": "star"})
        assert attrs["shape"] != "star" and attrs.get("second", {}).get("shape") != "star"
        assert not any("star" in c for c in caps)
    same = 0
    for i in range(120):  # one object: an image that drew no star is bit-identical
        image, _, _ = draw_one(9, i, 32, withhold={"shape": "star"})
        plain, _, plain_attrs = draw_one(9, i, 32)
        if plain_attrs["shape"] != "star":
            assert (plain == image).all()
            same += 1
        else:
            assert not (plain == image).all()
    assert 60 < same < 120
    with pytest.raises(ValueError, match="not a shape"):
        draw_one(9, 0, 32, withhold={"shape": "hexagon"})
