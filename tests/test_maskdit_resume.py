"""SIGKILL + resume of a tiny MaskDiT run ends bit-identical to an uninterrupted run (real
subprocesses, one thread, CPU): the fresh latents (mean + std·ε), the condition noise and
dropout, the masks and the EDM σ are all drawn from the loop's saved RNG."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from langfree.data.shapes import write_shapes
from sigkill import kill_after_first_state

ENTRY = """
import json, sys
import torch
torch.set_num_threads(1)
from langfree.training.options import TrainOptions
from langfree.training.run import TrainRequest, train
a = json.loads(sys.argv[1])
print(train(TrainRequest(family="maskdit", data=a["data"], encoder=a["encoder"],
                         overrides=a["overrides"], metrics="none", sample=["steps=2"],
                         family_options={"vae": a["vae"]}, options=TrainOptions(**a["options"]))))
"""
TINY = ["hidden=32", "depth=2", "heads=2", "decoder_hidden=16", "decoder_depth=1",
        "decoder_heads=2", "ema_decay=0.9"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _cmd(root: Path, outdir: Path, resume: str | None = None) -> list[str]:
    # 8 steps of batch 8, a state every 2 (one step per tick): the kill lands inside the run
    options = {"outdir": str(outdir), "kimg": 0.064, "batch": 8, "tick_kimg": 0.008, "snap": 2,
               "deterministic": True, "workers": 0}
    if resume:
        options["resume"] = resume
    arg = {"data": str(root / "train.zip"), "encoder": str(root / "clip"),
           "vae": str(root / "vae"), "overrides": TINY, "options": options}
    return [sys.executable, "-c", ENTRY, json.dumps(arg)]


def _run(cmd: list[str]) -> Path:
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return Path(out.stdout.strip().splitlines()[-1])


def _final(run: Path) -> dict[str, bytes]:
    snap = max((run / "snapshots").iterdir())
    states = sorted((run / "state").iterdir())
    files = {f"snapshot/{p.name}": p.read_bytes() for p in snap.glob("*.safetensors")}
    files.update({f"state/{p.name}": p.read_bytes() for p in states[-1].glob("*.safetensors")
                  if not p.name.startswith("rng")})
    return files


def test_sigkill_resume_is_exact(tmp_path):
    from langfree.checkpoint import save_snapshot
    from langfree.families.vae.config import VAEConfig
    from langfree.families.vae.family import VAEFamily
    from test_lafite_family_helpers import tiny_small_clip

    write_shapes(tmp_path / "train.zip", count=16, resolution=8, seed=0)
    tiny_small_clip(tmp_path / "clip", embed_dim=16, image_size=8)
    # an untrained langfree VAE (8 px -> 4×4×4 latents): a diffusers one costs an import per run
    save_snapshot(tmp_path / "vae", VAEFamily(VAEConfig(resolution=8, width=8,
                                                        channel_mult=(1, 2))), 0.0)
    whole = _run(_cmd(tmp_path, tmp_path / "whole"))

    killed = tmp_path / "killed"
    kill_after_first_state(_cmd(tmp_path, killed), killed, ENV)
    (killed_run,) = [p for p in killed.iterdir() if p.is_dir()]
    if (killed_run / "snapshots" / "snapshot-000000.064").exists():
        pytest.fail("the run finished before it was killed")

    resumed = _run(_cmd(tmp_path, killed, resume="latest"))
    assert resumed == killed_run and "resumed from" in (resumed / "log.txt").read_text()
    expected, got = _final(whole), _final(resumed)
    assert sorted(expected) == sorted(got) and expected
    for name in expected:
        assert expected[name] == got[name], f"{name} differs after resume"
    ticks = [json.loads(line)["Progress/tick"]
             for line in (resumed / "stats.jsonl").read_text().splitlines()]
    assert ticks == list(range(1, 9))  # the killed run's extra lines were dropped on resume
