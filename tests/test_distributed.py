"""Two CPU processes (torchrun, gloo): the loop's own gradient all-reduce keeps ranks equal."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent


def _torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    if exe.exists():
        return [str(exe)]
    if shutil.which("torchrun"):
        return ["torchrun"]
    pytest.skip("torchrun not found")


@pytest.mark.parametrize("workers", [1])
def test_distributed_two_processes_end_identical(tmp_path, workers):
    cmd = _torchrun() + [
        "--standalone",
        "--nproc_per_node",
        "2",
        str(TESTS / "engine_entry.py"),
        "--outdir",
        str(tmp_path),
        "--family",
        "tiny_gan",
        "--kimg",
        "0.128",
        "--batch",
        "8",
        "--batch-gpu",
        "2",
        "--workers",
        str(workers),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        cmd, check=False, env=env, cwd=TESTS, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    hashes = [(tmp_path / f"hash-rank{r}.txt").read_text() for r in range(2)]
    assert hashes[0] == hashes[1]
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    log = (run / "log.txt").read_text()
    assert "processes 2" in log and "micro-batch 2 x 2" in log  # 8 = 2 ranks × 2 micro × 2
    assert sum(line.startswith("tick ") for line in log.splitlines()) == 4
