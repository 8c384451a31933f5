"""The one training loop on tiny families (in process, CPU, a few seconds in all)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

import tiny_family
from langfree.checkpoint import list_snapshots, load_snapshot
from langfree.training.ema import ema_beta, update_ema
from langfree.training.loop import TrainingError, TrainOptions, train
from langfree.training.sampler import KeySampler, epoch_permutation
from langfree.training.state import list_states

pytestmark = pytest.mark.usefixtures("tiny_families")


def _options(tmp_path, **kw):
    base = {
        "outdir": str(tmp_path / "runs"),
        "kimg": 0.064,
        "batch": 8,
        "tick_kimg": 0.032,
        "snap": 1,
        "seed": 0,
        "deterministic": True,
    }
    return TrainOptions(**{**base, **kw})


def _family(cls=tiny_family.TinyDenoiser, seed=0, **cfg):
    torch.manual_seed(seed)
    return cls(cls.Config(**cfg))


def _stats(run_dir):
    return [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]


def test_one_optimiser_training_decreases_loss(tmp_path):
    run = train(
        _family(),
        tiny_family.TinyDataset(),
        _options(tmp_path, kimg=1.6, tick_kimg=0.4, snap=0),
        {},
    )
    losses = [s["Loss/main/loss"] for s in _stats(run)]
    assert len(losses) == 4
    assert losses[-1] < 0.5 * losses[0], losses
    assert len(list_snapshots(run)) == 1 and len(list_states(run)) == 1  # snap=0: end only
    assert [
        ln.split()[1] for ln in (run / "log.txt").read_text().splitlines() if ln.startswith("tick ")
    ] == ["1", "2", "3", "4"]
    assert list(run.glob("events.out.tfevents.*"))


def test_gan_phases_freeze_other_modules_and_run_lazily(tmp_path):
    fam = _family(tiny_family.TinyGAN, r1_interval=4)
    before = {n: m.state_dict()["0.weight"].clone() for n, m in fam.modules().items()}
    run = train(fam, tiny_family.TinyDataset(), _options(tmp_path), {})  # 8 steps
    assert fam.trainable_seen == {"G": {"G"}, "D": {"D"}, "Dreg": {"D"}}
    assert fam.calls == {"G": 8, "D": 8, "Dreg": 2}  # Dreg on steps 0 and 4
    after = {n: m.state_dict()["0.weight"] for n, m in fam.modules().items()}
    for name in ("G", "D", "G_ema"):
        assert not torch.equal(before[name], after[name]), name
    assert not torch.equal(after["G"], after["G_ema"])
    assert {"Loss/G/loss", "Loss/D/loss", "Loss/Dreg/loss", "Loss/Dreg/r1"} <= set(_stats(run)[0])


def test_ema_half_life_math():
    beta = ema_beta(batch=32, ema_kimg=10)
    assert beta ** (10_000 / 32) == pytest.approx(0.5)  # weight halves every 10 kimg
    assert ema_beta(32, 10, nimg=1000, rampup=0.05) == pytest.approx(0.5 ** (32 / 50))
    assert ema_beta(32, 10, nimg=10**7, rampup=0.05) == pytest.approx(beta)
    # a per-step decay is capped the same way, and is itself once the run is long enough
    assert ema_beta(32, None, nimg=1000, decay=0.999) == 0.999
    assert ema_beta(32, None, nimg=1000, rampup=0.05, decay=0.999) == pytest.approx(0.5 ** (32 / 50))
    assert ema_beta(32, None, nimg=10**7, rampup=0.05, decay=0.999) == 0.999
    src, ema = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        src.weight.fill_(2.0), ema.weight.fill_(1.0), src.running_mean.fill_(5.0)
    update_ema(ema, src, beta=0.25)
    assert torch.allclose(ema.weight, torch.full((3,), 0.25 * 1.0 + 0.75 * 2.0))
    assert torch.equal(ema.running_mean, src.running_mean)  # buffers are copied


@pytest.mark.parametrize("ema_kimg,tracks", [(1e-9, True), (1e9, False)])
def test_loop_applies_ema(tmp_path, ema_kimg, tracks):
    fam = _family()
    initial = fam.net_ema.state_dict()["0.weight"].clone()
    train(fam, tiny_family.TinyDataset(), _options(tmp_path, ema_kimg=ema_kimg), {})
    ema = fam.net_ema.state_dict()["0.weight"]
    if tracks:  # half-life ~0: the EMA equals the trained weights
        assert torch.equal(ema, fam.net.state_dict()["0.weight"])
    else:  # half-life ~inf: the EMA stays at its start
        assert torch.allclose(ema, initial, atol=1e-6) and not torch.equal(
            ema, fam.net.state_dict()["0.weight"]
        )


def test_preview_does_not_shift_training_rng(tmp_path):
    def greedy_preview(family):
        torch.rand(1000), np.random.rand(10), random.random()  # draws that must not leak
        return family.sample(torch.zeros(2, 4), [0, 1])

    results = []
    for i, preview in enumerate([None, greedy_preview]):
        fam = _family()
        train(fam, tiny_family.TinyDataset(), _options(tmp_path / str(i)), {}, preview=preview)
        results.append(fam.net.state_dict())
    for key in results[0]:
        assert torch.equal(results[0][key], results[1][key]), key


def test_non_finite_loss_stops_and_keeps_last_snapshot(tmp_path):
    fam = _family(nan_at_step=10)  # ticks are 4 steps: snapshots after steps 4 and 8
    with pytest.raises(TrainingError, match=r"non-finite loss in phase 'main' at kimg 0\.080"):
        train(fam, tiny_family.TinyDataset(), _options(tmp_path, kimg=0.16), {})
    (run,) = (tmp_path / "runs").iterdir()
    assert [p.name for p in list_snapshots(run)] == ["snapshot-000000.032", "snapshot-000000.064"]
    loaded = load_snapshot(run)
    assert all(torch.isfinite(p).all() for p in loaded.net.parameters())
    assert "non-finite loss in phase 'main'" in (run / "log.txt").read_text()


def test_run_training_turns_errors_into_one_line(tmp_path, capsys):
    import typer

    from langfree.commands.training import run_request
    from langfree.data.shapes import write_shapes
    from langfree.training.run import TrainRequest

    data = write_shapes(tmp_path / "s.zip", 16, 8, seed=0)
    request = TrainRequest("tiny", data=data, encoder=None, options=_options(tmp_path, batch=8))
    with pytest.raises(typer.Exit) as exit_info:
        run_request(request)
    assert exit_info.value.exit_code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: family tiny conditions on an encoder: pass --encoder")


def test_micro_batches_accumulate_to_the_same_step(tmp_path):
    """batch_gpu 4 × 2 accumulations = one batch of 8 (same data, same mean gradient)."""
    weights = []
    for i, batch_gpu in enumerate([8, 4]):
        fam = _family(tiny_family.TinyGAN)
        # the D loss draws noise per micro-batch, so compare the deterministic R1 phase only
        fam.phases = lambda f=fam: [p for p in type(f).phases(f) if p.name == "Dreg"]
        train(
            fam,
            tiny_family.TinyDataset(),
            _options(tmp_path / str(i), batch_gpu=batch_gpu, kimg=0.032, snap=0),
            {},
        )
        weights.append(fam.D.state_dict())
    for key in weights[0]:
        assert torch.allclose(weights[0][key], weights[1][key], atol=1e-6), key


def test_bf16_and_metrics_at_each_snapshot(tmp_path):
    seen = []

    def metrics(snapshot_dir):
        seen.append(snapshot_dir.name)
        torch.rand(3)  # must not shift training
        from langfree.metrics.records import metric_rows

        return metric_rows({"fake_metric": {"value": float(len(seen)), "extractor": "none"}},
                           snapshot_dir, None, None, {}, "train")

    fam = _family()
    run = train(
        fam,
        tiny_family.TinyDataset(),
        _options(tmp_path, mixed_precision="bf16"),
        {},
        metrics=metrics,
    )
    assert seen == ["snapshot-000000.032", "snapshot-000000.064"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["metric"], r["value"], r["source"]) for r in records] == [
        ("fake_metric", 1.0, "train"), ("fake_metric", 2.0, "train")]
    assert "mixed precision bf16" in (run / "log.txt").read_text()
    assert all(torch.isfinite(p).all() for p in fam.net.parameters())
    assert json.loads((run / "config.json").read_text())["train"]["mixed_precision"] == "bf16"


def test_dry_run_prints_config_and_writes_nothing(tmp_path, capsys):
    out = train(
        _family(), tiny_family.TinyDataset(), _options(tmp_path, dry_run=True), {"preset": "x"}
    )
    config = json.loads(capsys.readouterr().out)
    assert config["family"] == "tiny" and config["run"] == {"preset": "x"}
    assert config["train"]["batch_gpu"] == 8 and config["train"]["ema_kimg"] == pytest.approx(2.5)
    assert not (tmp_path / "runs").exists() and out.name.startswith("00000-")


def test_key_sampler_is_a_resumable_split_permutation():
    n, seed = 10, 3
    take = lambda s, k: [next(it) for it in [iter(s)] for _ in range(k)]
    single = take(KeySampler(n, seed), 40)
    assert sorted(k % n for k in single[:10]) == list(range(n))
    assert [k // n for k in single] == [p // n for p in range(40)]
    assert single[:10] == list(epoch_permutation(n, seed, 0))
    ranks = [take(KeySampler(n, seed, r, 2), 20) for r in range(2)]
    assert [k for pair in zip(*ranks) for k in pair] == single  # ranks interleave the stream
    assert take(KeySampler(n, seed, start=16), 24) == single[16:]  # resume at a position


def test_lr_rampdown_is_a_half_cosine_over_the_last_fraction(tmp_path):
    fam = _family()
    (opt,) = fam.optimizers().values()
    base = opt.param_groups[0]["lr"]
    run = train(fam, tiny_family.TinyDataset(),
                _options(tmp_path, kimg=0.128, tick_kimg=0.032, lr_rampdown=0.5), {})
    scales = [s["Progress/lr_scale"] for s in _stats(run)]
    # ticks end at 1/4, 2/4, 3/4, 4/4 of the run; the ramp covers the second half
    assert scales == pytest.approx([1.0, 1.0, 0.5, 0.0], abs=1e-6)
    # the last step ran at lr = base * scale(15/16 of the run) and left that lr in place
    assert opt.param_groups[0]["lr"] == pytest.approx(base * 0.5 * (1 + np.cos(np.pi * 7 / 8)))
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["lr_rampdown"] == 0.5


def test_bad_options_are_clear_errors(tmp_path):
    with pytest.raises(TrainingError, match="lr_rampdown"):
        train(_family(), tiny_family.TinyDataset(), _options(tmp_path, lr_rampdown=1.5), {})
    with pytest.raises(TrainingError, match="mixed.precision"):
        train(_family(), tiny_family.TinyDataset(), _options(tmp_path, mixed_precision="fp16"), {})
    with pytest.raises(Exception, match="resume"):
        train(_family(), tiny_family.TinyDataset(), _options(tmp_path, resume="latest"), {})
