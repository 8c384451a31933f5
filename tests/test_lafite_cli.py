"""``langfree train lafite`` with the seed's option names, on a tiny shapes archive."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from test_lafite_family_helpers import TINY_SETS, tiny_small_clip


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from langfree.data.archive import ArchiveWriter
    from langfree.data.shapes import write_shapes

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("lafite_cli")
    write_shapes(root / "train.zip", count=48, resolution=8, seed=0)
    write_shapes(root / "val.zip", count=16, resolution=8, seed=1)
    with ArchiveWriter(root / "images.zip", resolution=8) as w:     # image-only, no captions
        for i in range(16):
            w.add(np.full((8, 8, 3), i * 10, np.uint8))
    tiny_small_clip(root / "clip", embed_dim=16, image_size=8)
    return root


def _app():
    from langfree.cli import train_app

    return train_app


def _sets():
    return [a for s in TINY_SETS for a in ("--set", s)]


def test_seed_command_runs_and_writes_a_snapshot(files):
    out = files / "runs"
    args = ["lafite", "--data", str(files / "train.zip"), "--test_data", str(files / "val.zip"),
            "--temp", "0.5", "--itd", "10", "--itc", "10", "--gamma", "10", "--mixing_prob", "1.0",
            "--mirror", "1", "--kimg", "0.032", "--batch", "8", "--workers", "0",
            "--metrics", "none", "--snap", "1", "--tick", "0.016", "--outdir", str(out),
            "--encoder", str(files / "clip"), "--seed", "3", *_sets()]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    assert "lafite parameters" in result.output
    run = next(out.iterdir())
    config = json.loads((run / "config.json").read_text())
    cfg = config["config"]
    assert cfg["temperature"] == 0.5 and cfg["d_contrastive_weight"] == 10.0
    assert cfg["clip_contrastive_weight"] == 10.0 and cfg["mixing_prob"] == 1.0
    assert cfg["mirror"] is True and cfg["resolution"] == 8 and cfg["c_dim"] == 16
    assert config["encoder"] == str((files / "clip").resolve())
    snaps = sorted((run / "snapshots").iterdir())
    assert snaps and (snaps[-1] / "grid.png").is_file() and (snaps[-1] / "G_ema.safetensors").is_file()
    # the run's snapshot generates from prompts through the recorded encoder
    from langfree.commands import generate

    gen = typer.Typer()
    generate.register(gen)
    gen.command("noop")(lambda: None)
    res = CliRunner().invoke(gen, ["generate", str(run), "--prompt", "a red circle",
                                   "--seeds", "0-1", "--outdir", str(files / "gen")])
    assert res.exit_code == 0, res.output
    assert (files / "gen" / "grid.png").is_file()


def test_standard_setting_without_captions_fails_clearly(files):
    args = ["lafite", "--data", str(files / "images.zip"), "--mixing_prob", "0.0", "--kimg", "0.01",
            "--batch", "4", "--encoder", str(files / "clip"), "--outdir", str(files / "runs2"),
            *_sets()]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 2
    assert "captions" in result.output and "--mixing_prob 1.0" in result.output
    assert not (files / "runs2").exists()


def test_dry_run_preset_and_gpus_checks(files):
    base = ["lafite", "--data", str(files / "train.zip"), "--encoder", str(files / "clip"),
            "--outdir", str(files / "runs3")]
    dry = CliRunner().invoke(_app(), base + ["--dry-run", "--preset", "shapes32",
                                             "--set", "resolution=8", "--set", "channel_max=8"])
    assert dry.exit_code == 0, dry.output
    assert '"mirror": false' in dry.output and '"family": "lafite"' in dry.output
    wrong_res = CliRunner().invoke(_app(), base + ["--dry-run", "--preset", "shapes32"])
    assert wrong_res.exit_code == 2 and "--set resolution=8" in wrong_res.output
    gpus = CliRunner().invoke(_app(), base + ["--gpus", "2", "--dry-run"])
    assert gpus.exit_code == 2 and "accelerate launch" in gpus.output
    bad = CliRunner().invoke(_app(), base + ["--dry-run", "--set", "nonsense=1"])
    assert bad.exit_code == 2 and "nonsense" in bad.output


def test_perturb_trains_on_the_engine_and_conditions_lafite(files):
    out = files / "perturb"
    result = CliRunner().invoke(_app(), ["lafite-perturb", "--data", str(files / "train.zip"),
                                         "--encoder", str(files / "clip"), "--outdir", str(out),
                                         "--kimg", "0.04", "--tick", "0.04", "--batch", "8",
                                         "--hidden", "16"])
    assert result.exit_code == 0, result.output
    (run,) = out.iterdir()
    snap = sorted((run / "snapshots").iterdir())[-1]
    cfg = json.loads((snap / "config.json").read_text())["config"]
    assert cfg["hidden"] == 16 and cfg["dim"] == 16 and (snap / "perturb.safetensors").is_file()
    assert "main/nce" in (run / "stats.jsonl").read_text()
    dry = CliRunner().invoke(_app(), ["lafite", "--data", str(files / "images.zip"), "--perturb",
                                      str(run), "--encoder", str(files / "clip"), "--dry-run",
                                      "--outdir", str(files / "runs4"), *_sets()])
    assert dry.exit_code == 0, dry.output
    assert '"conditioning": "learned"' in dry.output and '"perturb_hidden": 16' in dry.output
    no_caps = CliRunner().invoke(_app(), ["lafite-perturb", "--data", str(files / "images.zip"),
                                          "--encoder", str(files / "clip"), "--outdir", str(files / "p2")])
    assert no_caps.exit_code == 2 and "has none" in no_caps.output
    assert not (files / "p2").exists()


def test_resume_takes_the_recorded_settings_and_refuses_conflicts(files):
    out = files / "runs5"
    base = ["lafite", "--data", str(files / "train.zip"), "--encoder", str(files / "clip"),
            "--kimg", "0.016", "--batch", "8", "--tick", "0.016", "--snap", "1",
            "--metrics", "none", "--outdir", str(out), "--itc", "3", *_sets()]
    assert CliRunner().invoke(_app(), base).exit_code == 0
    (run,) = out.iterdir()
    before = (run / "config.json").read_text()
    bad = CliRunner().invoke(_app(), ["lafite", "--resume", "latest", "--outdir", str(out),
                                      "--kimg", "0.032", "--itc", "4"])
    assert bad.exit_code == 2 and "clip_contrastive_weight (run: 3.0, now: 4.0)" in bad.output
    assert (run / "config.json").read_text() == before        # nothing written on refusal
    ok = CliRunner().invoke(_app(), ["lafite", "--resume", "latest", "--outdir", str(out),
                                     "--kimg", "0.032", "--tick", "0.016"])
    assert ok.exit_code == 0, ok.output
    assert "resumed from" in (run / "log.txt").read_text()
    assert [p.name for p in sorted((run / "snapshots").iterdir())][-1] == "snapshot-000000.032"
