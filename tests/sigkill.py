"""Start a training command and SIGKILL it once its first resumable state is on disk (the
resume tests of several families share it)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def kill_after_first_state(cmd: list[str], outdir: Path, env: dict, settle: float = 0.0,
                           poll: float = 0.02, timeout: float = 240) -> None:
    """Run ``cmd``; when ``outdir/*/state/step-*/progress.json`` appears (and ``settle`` more
    seconds have passed) kill it with SIGKILL and check it died of it."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.time() + timeout
        while not list(outdir.glob("*/state/step-*/progress.json")):
            if proc.poll() is not None:
                raise AssertionError(f"ended before its first state: {proc.stderr.read()[-2000:]}")
            if time.time() > deadline:
                raise AssertionError("no state written in time")
            time.sleep(poll)
        time.sleep(settle)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
