"""`langfree eval` end to end on a tiny snapshot: JSON on stdout, metrics.jsonl beside the run,
the extractor named, IS reported unavailable without Inception weights, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import tiny_family
from langfree.checkpoint import save_snapshot
from langfree.cli import app
from langfree.data.shapes import write_shapes
from test_metrics_helpers import PixelEncoder


@pytest.fixture
def setup(tmp_path, monkeypatch):
    import langfree.encoders

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors; restored below
    tiny_family.register(monkeypatch)
    monkeypatch.setattr(langfree.encoders, "load_encoder",
                        lambda spec, device="cpu": PixelEncoder(4) if spec == "test:pixel" else None)
    torch.manual_seed(0)
    family = tiny_family.TinyDenoiser(tiny_family.TinyConfig(), encoder=PixelEncoder(4))
    run = tmp_path / "run"
    save_snapshot(run / "snapshots" / "snapshot-000000", family, kimg=0.0)
    data = write_shapes(tmp_path / "ref.zip", 24, 8, seed=2)
    yield run, data
    torch.set_num_threads(threads)


def test_eval_writes_json_and_metrics_jsonl(setup):
    run, data = setup
    names = "fid24_full,kid24_full,is24,clip_score24,r_precision24,attribute_accuracy20"
    args = ["eval", str(run), "--metrics", names, "--data", str(data), "--seed", "3"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout)
    results = report["results"]
    assert report["family"] == "tiny" and report["snapshot"].endswith("snapshot-000000")
    assert results["fid24_full"]["extractor"] == "clip:test:pixel"
    assert results["fid24_full"]["inception"] is False and results["fid24_full"]["value"] > 0
    assert results["is24"]["value"] is None and "--inception" in results["is24"]["reason"]
    assert 0 <= results["r_precision24"]["value"] <= 1
    assert results["attribute_accuracy20"]["ceiling"]["overall"] >= 0  # evaluator trained once
    assert (data.parent / "ref.attribute-evaluator" / "evaluator.json").is_file()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["metric"] for x in lines] == names.split(",")
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0, second.output
    again = json.loads(second.stdout)["results"]
    for name in ("fid24_full", "kid24_full", "clip_score24", "r_precision24"):
        assert again[name]["value"] == results[name]["value"]  # deterministic per seed
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 12
    # the cached evaluator beside the archive is retrained when the archive is rewritten
    meta = data.parent / "ref.attribute-evaluator" / "evaluator.json"
    write_shapes(data, 30, 8, seed=5)
    third = CliRunner().invoke(app, ["eval", str(run), "--metrics", "attribute_accuracy10",
                                     "--data", str(data), "--no-write"])
    assert third.exit_code == 0, third.output
    assert json.loads(meta.read_text())["train"]["archive_bytes"] == data.stat().st_size
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 12  # --no-write


def test_eval_errors_are_one_clear_line(setup, tmp_path):
    run, data = setup
    bad_name = CliRunner().invoke(app, ["eval", str(run), "--metrics", "fid", "--data", str(data)])
    assert bad_name.exit_code == 2 and "unknown metric 'fid'" in bad_name.output
    no_data = CliRunner().invoke(app, ["eval", str(run), "--metrics", "fid10_full",
                                       "--data", str(tmp_path / "missing.zip")])
    assert no_data.exit_code == 2 and "missing.zip" in no_data.output
    no_snap = CliRunner().invoke(app, ["eval", str(tmp_path / "nothing"), "--metrics", "fid10_full",
                                       "--data", str(data)])
    assert no_snap.exit_code == 2 and "nothing" in no_snap.output
    assert not (run / "metrics.jsonl").exists()
