"""The quickstart end to end at smoke size: every stage runs, the report has what the README
promises, the generator's archive holds no captions, and a rerun reuses finished stages."""

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from langfree.cli import app
from langfree.data.archive import ImageArchive
from langfree.quickstart import SMOKE_PLAN


def test_quickstart_smoke_writes_report_and_grid(tmp_path):
    out = tmp_path / "qs"
    result = CliRunner().invoke(app, ["quickstart", "--outdir", str(out), "--smoke"])
    assert result.exit_code == 0, result.output
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
