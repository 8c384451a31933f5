"""The quickstart end to end at smoke size: every stage runs, the report has what the README
promises, the generator's archive holds no captions, and a rerun reuses finished stages."""

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from langfree.cli import app
from langfree.data.archive import ImageArchive
from langfree.families.maskdit.quickstart import SMOKE_PLAN as MASKDIT_SMOKE_PLAN
from langfree.quickstart import SMOKE_PLAN


@pytest.fixture(scope="module")
def lafite_smoke(tmp_path_factory):
    """One LAFITE smoke quickstart (the default family); the maskdit test reuses its data, CLIP
    and evaluator as a second family in the same outdir would."""
    out = tmp_path_factory.mktemp("quickstart") / "qs"
    result = CliRunner().invoke(app, ["quickstart", "--outdir", str(out), "--smoke"])
    assert result.exit_code == 0, result.output
    return out


def test_quickstart_smoke_writes_report_and_grid(lafite_smoke):
    out = lafite_smoke
    report = json.loads((out / "report.json").read_text())
    acc = report["attribute_accuracy"]
    for key in ("color", "shape", "size", "position", "overall"):
        assert 0.0 <= acc[key] <= 1.0
    assert set(report["attribute_ceiling_real_images"]) >= {"color", "shape", "size", "position"}
    assert report["fid"]["extractor"]                 # FID always names its feature extractor
    assert report["fid"].get("inception") is False    # no Inception weights here: never implied
    assert report["kimg"] > 0 and report["minutes"] > 0
    assert 0.0 <= report["r_precision"]["value"] <= 1.0
    # LAFITE-G's noise follows this CLIP's measured caption-image cosine, and training used it
    pseudo = report["pseudo_text"]
    assert pseudo["paired_cosine"] == pytest.approx(report["clip"]["paired_cosine"], abs=1e-4)
    config = json.loads((Path(report["snapshot"]) / "config.json").read_text())
    assert config["config"]["image_noise"] == pytest.approx(pseudo["image_noise"])

    grid = Image.open(out / "grid.png")
    side = 32
    assert grid.size == (SMOKE_PLAN.grid_seeds * side, SMOKE_PLAN.grid_prompts * side)

    gan = ImageArchive(out / "data" / "gan-images-only.zip")
    assert not any(gan.captions(i) for i in range(len(gan)))   # language-free: images only
    clip = ImageArchive(out / "data" / "clip-captioned.zip")
    assert clip.has_captions

    # A rerun finds every stage done and rewrites the same report.
    before = (out / "clip" / "encoder.safetensors").stat().st_mtime_ns
    result = CliRunner().invoke(app, ["quickstart", "--outdir", str(out), "--smoke"])
    assert result.exit_code == 0, result.output
    assert (out / "clip" / "encoder.safetensors").stat().st_mtime_ns == before
    again = json.loads((out / "report.json").read_text())
    assert again["attribute_accuracy"] == acc
    assert again["family"] == "lafite"


def test_quickstart_maskdit_smoke(lafite_smoke, tmp_path):
    """``--family maskdit``: the shared stages are reused, the family's stage trains a VAE and
    MaskDiT on the image-only split, and the report has the same fields and bars."""
    out = tmp_path / "qs"
    for part in ("data", "clip", "evaluator"):
        shutil.copytree(lafite_smoke / part, out / part)
    before = (out / "clip" / "encoder.safetensors").stat().st_mtime_ns
    result = CliRunner().invoke(app, ["quickstart", "--family", "maskdit", "--outdir", str(out),
                                      "--smoke"])
    assert result.exit_code == 0, result.output
    assert (out / "clip" / "encoder.safetensors").stat().st_mtime_ns == before  # shared stage reused
    report = json.loads((out / "report.json").read_text())
    lafite = json.loads((lafite_smoke / "report.json").read_text())
    shared = {"attribute_accuracy", "attribute_ceiling_real_images", "r_precision", "fid",
              "precision_recall", "diversity", "unprompted_coverage", "bars", "kimg", "minutes"}
    assert shared <= set(report) and shared <= set(lafite)
    assert set(report["bars"]) == set(lafite["bars"])
    assert report["family"] == "maskdit" and "pseudo_text" not in report
    assert report["vae"]["psnr"] is not None and report["vae"]["minutes"] >= 0
    # σ_aug follows this CLIP's caption-image cosine (as LAFITE's noise does), and training used it
    assert report["maskdit"]["paired_cosine"] == pytest.approx(report["clip"]["paired_cosine"],
                                                               abs=1e-4)
    ceiling = report["vae"]["ceiling"]  # the evaluator on the VAE's reconstructions
    assert ceiling["images"] > 0 and set(ceiling["reconstructed"]) == set(ceiling["real"])
    # the plan's sampling options (guided) reach the metrics
    assert report["fid"]["sample_options"] == {"steps": 2, "guidance_scale": 3.0}
    config = json.loads((Path(report["snapshot"]) / "config.json").read_text())
    assert config["family"] == "maskdit" and config["config"]["mixing_prob"] == 1.0
    assert config["config"]["cond_noise"] == report["maskdit"]["cond_noise"]
    # the plan's lr ramp-down and the preset's annealed mask (cosine to unmasked) reach the run
    run_config = json.loads((Path(report["snapshot"]).parent.parent / "config.json").read_text())
    assert run_config["train"]["lr_rampdown"] == MASKDIT_SMOKE_PLAN.lr_rampdown > 0
    assert config["config"]["mask_schedule"] == "cosine" and config["config"]["mask_ratio_min"] == 0
    assert Path(config["config"]["vae"]).is_relative_to(out / "vae")
    grid = Image.open(out / "grid.png")
    assert grid.size == (SMOKE_PLAN.grid_seeds * 32, SMOKE_PLAN.grid_prompts * 32)


def test_reconstruction_ceiling_scores_reconstructions_not_originals(lafite_smoke):
    from langfree.metrics.attributes import load_attribute_evaluator
    from langfree.quickstart import StageContext, reconstruction_ceiling

    ctx = StageContext(out=lafite_smoke, plan=SMOKE_PLAN, family_plan=None, clip_zip=Path(),
                       images_zip=Path(), eval_zip=lafite_smoke / "data" / "eval.zip",
                       encoder_dir=Path(), clip_metrics={}, stages=None, log=print,
                       evaluator=load_attribute_evaluator(lafite_smoke / "evaluator"))
    exact = reconstruction_ceiling(ctx, lambda x: x, count=64)
    assert exact["reconstructed"] == exact["real"] and exact["psnr"] > 40
    flat = reconstruction_ceiling(ctx, lambda x: x.mean(dim=(2, 3), keepdim=True).expand_as(x),
                                  count=64)  # one colour per image: no object left
    assert flat["real"] == exact["real"] and flat["psnr"] < exact["psnr"]


def test_quickstart_unknown_family_says_which_exist(tmp_path):
    result = CliRunner().invoke(app, ["quickstart", "--family", "nope", "--outdir", str(tmp_path)])
    assert result.exit_code == 2
    assert "lafite" in result.output and "maskdit" in result.output
