"""Snapshots and resumable state: round trips, atomicity, resolution."""

from __future__ import annotations

import json

import pytest
import torch

import tiny_family
from langfree import checkpoint
from langfree.checkpoint import (
    SnapshotError,
    list_snapshots,
    load_snapshot,
    resolve_snapshot,
    save_snapshot,
)
from langfree.training import state as st


@pytest.fixture(autouse=True)
def _registry(monkeypatch):
    tiny_family.register(monkeypatch)


def _trained_gan(seed=0):
    torch.manual_seed(seed)
    fam = tiny_family.TinyGAN(tiny_family.TinyGANConfig(hidden=16))
    with torch.no_grad():  # make the EMA differ from G so a mixed-up load would show
        for p in fam.G.parameters():
            p.add_(torch.randn_like(p))
    return fam


def test_snapshot_round_trip_gives_identical_outputs(tmp_path):
    fam = _trained_gan()
    cond = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    path = save_snapshot(
        tmp_path / "snapshots" / "snapshot-000012",
        fam,
        12.0,
        extra={"note": 1},
        grid=fam.sample(cond, [0, 1, 2]),
    )
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == "langfree-snapshot" and manifest["kimg"] == 12.0
    assert manifest["modules"] == ["D", "G", "G_ema"] and manifest["extra"] == {"note": 1}
    assert json.loads((path / "config.json").read_text())["config"]["hidden"] == 16
    assert (path / "grid.png").is_file()
    loaded = load_snapshot(tmp_path)  # a run dir resolves to its latest snapshot
    assert loaded.config == fam.config and loaded.encoder is None
    assert torch.equal(loaded.sample(cond, [0, 1, 2]), fam.sample(cond, [0, 1, 2]))
    for name, module in fam.modules().items():
        for key, value in module.state_dict().items():
            assert torch.equal(loaded.modules()[name].state_dict()[key], value), (name, key)


def test_tied_weights_are_saved(tmp_path):
    fam = _trained_gan()
    fam.G_ema[0].weight = fam.G[0].weight  # shared storage: safetensors refuses it unless cloned
    save_snapshot(tmp_path / "s", fam, 1.0)
    loaded = load_snapshot(tmp_path / "s")
    assert torch.equal(loaded.G_ema[0].weight, fam.G[0].weight)


def test_crash_during_save_keeps_previous_snapshot(tmp_path, monkeypatch):
    run = tmp_path / "run"
    fam = _trained_gan()
    first = save_snapshot(run / "snapshots" / "snapshot-000004", fam, 4.0)
    expected = fam.G.state_dict()["0.weight"].clone()
    real_save, calls = checkpoint.save_tensors, []

    def crashing_save(path, tensors):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        real_save(path, tensors)

    monkeypatch.setattr(checkpoint, "save_tensors", crashing_save)
    with torch.no_grad():
        fam.G[0].weight.add_(1.0)
    for target in ("snapshot-000008", "snapshot-000004"):  # a new name, then overwriting
        calls.clear()
        with pytest.raises(OSError, match="simulated"):
            save_snapshot(run / "snapshots" / target, fam, 8.0)
    assert sorted(p.name for p in (run / "snapshots").iterdir()) == ["snapshot-000004"]
    assert resolve_snapshot(run) == first
    assert torch.equal(load_snapshot(run).G.state_dict()["0.weight"], expected)


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_next_save_sweeps_what_a_killed_writer_left(tmp_path):
    # a SIGKILL mid-save leaves a temp dir under the dead PID; a later writer (a resumed run,
    # another PID) must not leave it beside its own states forever
    import os

    from langfree.checkpoint import atomic_dir

    root, dead, live = tmp_path / "state", _dead_pid(), os.getppid()
    for name in (f".step-000000008.tmp-{dead}", f".step-000000004.old-{dead}",
                 f".step-000000012.old-{dead}", f".step-000000016.tmp-{live}"):
        (root / name).mkdir(parents=True)
        (root / name / "x.safetensors").write_bytes(b"partial")
    (root / "step-000000004").mkdir()
    with atomic_dir(root / "step-000000008") as tmp:
        (tmp / "progress.json").write_text("{}")
    assert sorted(p.name for p in root.iterdir()) == [
        f".step-000000012.old-{dead}",  # its target is gone: the only copy, kept
        f".step-000000016.tmp-{live}",  # a live writer's
        "step-000000004", "step-000000008"]


def test_resolve_snapshot_orders_by_kimg_and_rejects_garbage(tmp_path):
    fam = _trained_gan()
    for name in ("snapshot-000000.500", "snapshot-000002", "snapshot-000010"):
        save_snapshot(tmp_path / "snapshots" / name, fam, 0.0)
    (tmp_path / "snapshots" / ".snapshot-000020.tmp-1").mkdir()  # a crashed save
    assert [p.name for p in list_snapshots(tmp_path)][-1] == "snapshot-000010"
    assert resolve_snapshot(tmp_path).name == "snapshot-000010"
    with pytest.raises(SnapshotError, match="no snapshot found"):
        resolve_snapshot(tmp_path / "snapshots" / "snapshot-000002" / "..")
    with pytest.raises(SnapshotError, match="does not exist"):
        resolve_snapshot(tmp_path / "nope")


def test_optimizer_and_rng_state_round_trip(tmp_path):
    fam = _trained_gan()
    opts = fam.optimizers()
    for _ in range(3):
        for opt, net in ((opts["G"], fam.G), (opts["D"], fam.D)):
            opt.zero_grad()
            net(torch.randn(2, net[0].in_features)).square().mean().backward()
            opt.step()
    rng = st.rng_state()
    expected_draw = torch.rand(5)
    progress = {
        "step": 3,
        "nimg": 24,
        "tick": 1,
        "elapsed": 1.0,
        "world": 1,
        "batch": 8,
        "log_bytes": {},
    }
    saved = st.write_state(tmp_path, progress, fam.modules(), opts, [rng])
    fresh = _trained_gan(seed=1)
    restored = st.load_state(saved, fresh.modules(), fresh.optimizers(), rank=0, world=1)
    for name in ("G", "D"):
        a, b = opts[name].state_dict(), fresh.optimizers()[name].state_dict()
        assert a["param_groups"] == b["param_groups"]
        for idx, entry in a["state"].items():
            for key, value in entry.items():
                assert torch.equal(value, b["state"][idx][key]), (name, idx, key)
    torch.rand(7)  # move the stream, then restore
    st.set_rng_state(restored["rng"])
    assert torch.equal(torch.rand(5), expected_draw)
    assert st.resolve_resume(str(tmp_path), tmp_path) == (tmp_path, saved)
    assert json.loads((saved / "optim-G.json").read_text())  # JSON + safetensors, no pickle
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.pkl"))
