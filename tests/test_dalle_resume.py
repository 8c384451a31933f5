"""SIGKILL + resume of a VQGAN run and of a DALL·E run end bit-identical to uninterrupted runs
(real subprocesses, one thread, CPU). The DALL·E run's resume covers BPE dropout, caption
dropout and the code-set choice: all drawn from the loop's saved RNG."""

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
from langfree.families import registry
registry._FAMILIES.update({"vqgan": "langfree.families.vqgan", "dalle": "langfree.families.dalle"})
from langfree.training.options import TrainOptions
from langfree.training.run import TrainRequest, train
a = json.loads(sys.argv[1])
print(train(TrainRequest(family=a["family"], data=a["data"], preset="tiny",
                         family_options=a.get("family_options", {}),
                         options=TrainOptions(**a["options"]))))
"""


KIMG, TICK = 0.096, 0.016  # 6 ticks: the kill after the first state leaves 5 to go, so even a
# fast quiet machine cannot finish the run in the 0.3 s settle time (2 ticks could)


def _cmd(family, data, outdir, resume=None, **family_options):
    options = {"outdir": str(outdir), "kimg": KIMG, "batch": 8, "tick_kimg": TICK, "snap": 1}
    if resume:
        options["resume"] = resume
    arg = {"family": family, "data": str(data), "options": options,
           "family_options": family_options}
    return [sys.executable, "-c", ENTRY, json.dumps(arg)]


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _run(cmd):
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return Path(out.stdout.strip().splitlines()[-1])


def _final(run: Path) -> dict[str, bytes]:
    snap = max((run / "snapshots").iterdir())
    (state,) = (run / "state").iterdir()
    files = {f"snapshot/{p.name}": p.read_bytes() for p in snap.glob("*.safetensors")}
    files.update({f"state/{p.name}": p.read_bytes() for p in state.glob("*.safetensors")
                  if not p.name.startswith("rng")})
    return files


def _kill_after_first_state(cmd, outdir: Path) -> None:
    kill_after_first_state(cmd, outdir, ENV, settle=0.3, poll=0.05)


@pytest.mark.parametrize("family", ["vqgan", "dalle"])
def test_sigkill_resume_is_exact(tmp_path_factory, family):
    root = tmp_path_factory.mktemp(f"resume-{family}")
    data = write_shapes(root / "shapes.zip", count=24, resolution=16, seed=0)
    extra = {}
    if family == "dalle":  # a VQGAN to tokenise with (and the cached BPE, made once)
        extra["vqgan"] = str(_run(_cmd("vqgan", data, root / "vq")))
    whole = _run(_cmd(family, data, root / "whole", **extra))
    _kill_after_first_state(_cmd(family, data, root / "killed", **extra), root / "killed")
    (killed_run,) = [p for p in (root / "killed").iterdir() if p.is_dir()]
    snapshots = (killed_run / "snapshots")
    if snapshots.is_dir() and len(list(snapshots.iterdir())) >= round(KIMG / TICK):
        pytest.fail("the run finished before it was killed")
    resumed = _run(_cmd(family, data, root / "killed", resume="latest", **extra))
    expected, got = _final(whole), _final(resumed)
    assert sorted(expected) == sorted(got)
    for name in expected:
        assert expected[name] == got[name], f"{name} differs after resume"
