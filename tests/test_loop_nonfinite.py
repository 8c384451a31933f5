"""A run that goes non-finite stops with a message naming what and where, and leaves its last
snapshot as it was: non-finite loss or gradients (checked every phase), and weights that a
finite step overflowed (checked before each snapshot, so the bad tick writes nothing)."""

from __future__ import annotations

import pytest
import torch

import tiny_family
from langfree.checkpoint import list_snapshots, load_snapshot
from langfree.training.loop import TrainingError, TrainOptions, train
from langfree.training.state import list_states


class OverflowingDenoiser(tiny_family.TinyDenoiser):
    """Gradients stay finite, but after backward of step ``at`` the weights become inf (as an
    enormous update would make them); the tick that step ends must not be saved."""

    at = 7

    def after_backward(self, phase, nets):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == self.at + 1:
            with torch.no_grad():
                next(nets["net"].parameters()).fill_(float("inf"))


pytestmark = pytest.mark.usefixtures("tiny_families")


def test_overflowed_weights_stop_before_the_snapshot(tmp_path):
    torch.manual_seed(0)
    fam = OverflowingDenoiser(tiny_family.TinyConfig())
    # batch 8, ticks of 4 steps, a snapshot every tick: step 7 (0-based) ends tick 2
    options = TrainOptions(outdir=str(tmp_path / "runs"), kimg=0.16, batch=8, tick_kimg=0.032,
                           snap=1, seed=0, deterministic=True)
    with pytest.raises(TrainingError, match=r"non-finite weights in net\..* at kimg 0\.064"):
        train(fam, tiny_family.TinyDataset(), options, {})
    (run,) = (tmp_path / "runs").iterdir()
    assert [p.name for p in list_snapshots(run)] == ["snapshot-000000.032"]
    assert [p.name for p in list_states(run)] == ["step-000000004"]  # resumable, finite
    loaded = load_snapshot(run)
    assert all(torch.isfinite(p).all() for p in loaded.net.parameters())
    log = (run / "log.txt").read_text()
    assert "non-finite weights" in log and "the last good snapshot is in" in log
