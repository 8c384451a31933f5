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


def _bank_worker(rank: int, world: int, init: str, out: str) -> None:
    import torch
    import torch.distributed as dist
    from safetensors.torch import save_file

    from langfree.families.lafite.loss import ConditionBank

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        bank = ConditionBank(8, 2)
        bank.push(torch.full((3, 2), float(rank + 1)))       # each rank sees its own conditions
        save_file({"bank": bank.bank, "filled": bank.filled}, f"{out}/bank{rank}.safetensors")
    finally:
        dist.destroy_process_group()


def test_condition_bank_holds_every_ranks_conditions_on_every_rank(tmp_path):
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_bank_worker, args=(2, init, str(tmp_path)), nprocs=2, join=True)
    banks = [load_file(tmp_path / f"bank{r}.safetensors") for r in range(2)]
    assert (banks[0]["bank"] == banks[1]["bank"]).all()          # identical queues
    assert int(banks[0]["filled"]) == 6
    assert banks[0]["bank"][:6, 0].tolist() == [1, 1, 1, 2, 2, 2]   # rank 0's, then rank 1's
