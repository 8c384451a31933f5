"""Exact resume: a run killed with SIGKILL mid-tick and resumed ends bit-identical to an
uninterrupted run (deterministic, CPU, real subprocesses)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).parent
ENTRY = [sys.executable, str(TESTS / "engine_entry.py")]


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(TESTS)}


def _run(args, **kw):
    return subprocess.run(
        ENTRY + args,
        check=False,
        env=_env(),
        cwd=TESTS,
        capture_output=True,
        text=True,
        timeout=120,
        **kw,
    )


def _final_files(outdir: Path) -> dict[str, bytes]:
    (run,) = [p for p in outdir.iterdir() if p.is_dir()]
    snap = max((run / "snapshots").iterdir())
    (state,) = (run / "state").iterdir()
    files = {f"snapshot/{p.name}": p.read_bytes() for p in snap.glob("*.safetensors")}
    files.update(
        {
            f"state/{p.name}": p.read_bytes()
            for p in state.glob("*.safetensors")
            if not p.name.startswith("rng")
        }
    )
    return files


def _wait_for_state(outdir: Path, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if list(outdir.glob("*/state/step-*/progress.json")):
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended before its first state: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("no state written in time")


def test_resume_after_sigkill_is_exact(tmp_path):
    # lr ramp-down over the second half: the kill lands inside it, so the schedule is resumed too
    game = ["--family", "tiny_gan", "--kimg", "0.192", "--tick-kimg", "0.032", "--snap", "2",
            "--lr-rampdown", "0.5"]
    whole = _run(["--outdir", str(tmp_path / "whole")] + game)
    assert whole.returncode == 0, whole.stderr

    killed_dir = tmp_path / "killed"
    # ~0.1 s per step (8 items × 12 ms): the state appears after tick 2, then we kill mid-tick 3
    proc = subprocess.Popen(
        ENTRY + ["--outdir", str(killed_dir), "--sleep", "0.012"] + game,
        env=_env(),
        cwd=TESTS,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_state(killed_dir, proc)
        time.sleep(0.25)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not list(killed_dir.glob("hash-*")), "the run finished before it was killed"

    # A resume with a conflicting setting is refused and touches nothing (issue 10): the
    # resume after it must still continue bitwise exactly.
    (run,) = [p for p in killed_dir.iterdir() if p.is_dir()]
    before = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    conflict = [a if a != "0.5" else "0.25" for a in game]          # --lr-rampdown 0.25
    refused = _run(["--outdir", str(killed_dir), "--resume", "latest"] + conflict)
    assert refused.returncode != 0 and "lr_rampdown" in refused.stderr, refused.stderr
    assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before

    resumed = _run(["--outdir", str(killed_dir), "--resume", "latest"] + game)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout

    expected, got = _final_files(tmp_path / "whole"), _final_files(killed_dir)
    assert sorted(expected) == sorted(got)
    for name in expected:
        assert expected[name] == got[name], f"{name} differs after resume"
    (run,) = [p for p in killed_dir.iterdir() if p.is_dir()]
    ticks = [
        json.loads(line)["Progress/tick"] for line in (run / "stats.jsonl").read_text().splitlines()
    ]
    assert ticks == [1, 2, 3, 4, 5, 6]  # the killed run's extra lines were dropped on resume
