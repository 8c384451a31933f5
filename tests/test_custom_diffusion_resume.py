"""A ``langfree train custom-diffusion`` run (the seed's options, through the CLI in a real
subprocess) killed with SIGKILL after a checkpoint and resumed ends bitwise equal to an
uninterrupted run: trained layers, token rows, optimizer state and the diffusers-format files."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sigkill import kill_after_first_state

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    from langfree.families.sd.tiny import write_shape_images, write_tiny_base

    root = tmp_path_factory.mktemp("cdresume")
    return {"root": root, "base": write_tiny_base(root / "base"),
            "inst": write_shape_images(root / "inst", n=3, size=24)}


def _args(dirs, name: str) -> list[str]:
    root = dirs["root"]
    return [sys.executable, "-m", "langfree", "train", "custom-diffusion",
            "--pretrained_model_name_or_path", str(dirs["base"]),
            "--instance_data_dir", str(dirs["inst"]),
            "--instance_prompt", "photo of a <new1> square", "--modifier_token", "<new1>",
            "--with_prior_preservation", "--class_prompt", "square",
            "--class_data_dir", str(root / "cls"), "--num_class_images", "2",
            "--train_batch_size", "2", "--learning_rate", "1e-3", "--lr_warmup_steps", "6",
            "--max_train_steps", "24", "--checkpointing_steps", "4", "--hflip",
            "--output_dir", str(root / f"{name}-out"), "--outdir", str(root / name),
            "--sample", "num_inference_steps=1", "--deterministic"]


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _final(dirs, name: str) -> dict[str, bytes]:
    (run,) = [p for p in (dirs["root"] / name).iterdir() if p.is_dir()]
    snap = max((run / "snapshots").iterdir())
    (state,) = (run / "state").iterdir()
    files = {f"snapshot/{p.name}": p.read_bytes() for p in snap.glob("*.safetensors")}
    files.update({f"state/{p.name}": p.read_bytes() for p in state.glob("*.safetensors")
                  if not p.name.startswith("rng")})
    out = dirs["root"] / f"{name}-out"
    files.update({f"output_dir/{p.name}": p.read_bytes() for p in out.glob("*.safetensors")})
    return files


def test_sigkill_and_resume_is_bitwise_exact(dirs):
    whole = subprocess.run(_args(dirs, "whole"), env=_env(), capture_output=True, text=True,
                           timeout=300)
    assert whole.returncode == 0, whole.stderr[-2000:]

    killed = dirs["root"] / "killed"
    kill_after_first_state(_args(dirs, "killed"), killed, _env())
    assert not (dirs["root"] / "killed-out").exists(), "the run finished before it was killed"

    resumed = subprocess.run(_args(dirs, "killed") + ["--resume", "latest"], env=_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout + resumed.stderr

    expected, got = _final(dirs, "whole"), _final(dirs, "killed")
    assert sorted(expected) == sorted(got)
    assert any(k.startswith("output_dir/") for k in expected)
    for name in expected:
        assert expected[name] == got[name], f"{name} differs after resume"
