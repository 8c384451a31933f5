"""``langfree train vae`` then ``langfree train maskdit`` (masked) then the unmasked fine-tune
(``--init-from``) on the one engine, in process, on a tiny shapes archive; and exact resume."""

import json

import pytest
import torch

TINY = ["hidden=32", "depth=2", "heads=2", "decoder_hidden=16", "decoder_depth=1",
        "decoder_heads=2", "ema_decay=0.9"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from langfree.data.shapes import write_shapes
    from langfree.families import registry
    from langfree.training.options import TrainOptions
    from langfree.training.run import TrainRequest, train
    from test_lafite_family_helpers import tiny_small_clip

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    mp = pytest.MonkeyPatch()
    mp.setitem(registry._FAMILIES, "maskdit", "langfree.families.maskdit")
    mp.setitem(registry._FAMILIES, "vae", "langfree.families.vae")
    root = tmp_path_factory.mktemp("maskdit_train")
    write_shapes(root / "train.zip", count=16, resolution=8, seed=0)
    tiny_small_clip(root / "clip", embed_dim=16, image_size=8)
    vae = train(TrainRequest(family="vae", data=root / "train.zip", metrics="none",
                             overrides=["width=8", "channel_mult=[1,2]"],
                             options=TrainOptions(outdir=str(root / "vae"), kimg=0.016, batch=8,
                                                  tick_kimg=0.016, snap=1, workers=0)))
    yield root, vae
    mp.undo()
    torch.set_num_threads(threads)


def request(root, vae, outdir, **kw):
    from langfree.training.options import TrainOptions
    from langfree.training.run import TrainRequest

    family_options = {"vae": str(vae), **kw.pop("family_options", {})}
    opts = {**dict(outdir=str(root / outdir), kimg=0.016, batch=8, tick_kimg=0.016, snap=1,
                   seed=0, workers=0), **kw}
    return TrainRequest(family="maskdit", data=root / "train.zip", encoder=str(root / "clip"),
                        overrides=TINY, metrics="none", sample=["steps=2"],
                        family_options=family_options, options=TrainOptions(**opts))


def test_vae_then_masked_then_finetune(files):
    from langfree.checkpoint import load_snapshot
    from langfree.training.run import train

    root, vae = files
    stats = json.loads((vae / "stats.jsonl").read_text().splitlines()[-1])
    assert {"Loss/main/psnr", "Loss/main/latent_std"} <= set(stats)

    run = train(request(root, vae, "runs"))
    cfg = json.loads((run / "config.json").read_text())["config"]
    assert (cfg["latent_channels"], cfg["latent_downsample"], cfg["cond_dim"]) == (4, 2, 16)
    assert len(list(root.glob("train.latents-*.safetensors"))) == 1  # the sidecar
    snap = sorted((run / "snapshots").iterdir())[-1]
    manifest = json.loads((snap / "manifest.json").read_text())
    assert manifest["modules"] == ["net_ema"] and "vae" in manifest["references"]
    assert (snap / "grid.png").is_file()

    tuned = train(request(root, vae, "runs", family_options={"mask_ratio": 0.0},
                          init_from=str(run)))
    last = json.loads((tuned / "stats.jsonl").read_text().splitlines()[-1])
    assert last["Loss/main/mask_ratio"] == 0.0 and "Loss/main/loss_mae" not in last
    assert "initialised from" in (tuned / "log.txt").read_text()
    assert len(list(root.glob("train.latents-*.safetensors"))) == 1  # reused, not redone

    family = load_snapshot(tuned, encoder=None)
    emb = torch.nn.functional.normalize(torch.randn(2, 16), dim=1)
    images = family.sample(emb, [0, 1], family.SampleOptions(steps=2))
    assert images.shape == (2, 3, 8, 8)


def test_resume_is_exact(files):
    from langfree.checkpoint import load_tensors
    from langfree.training.run import train
    from langfree.training.state import list_states

    root, vae = files
    kw = dict(kimg=0.032, tick_kimg=0.008, deterministic=True)
    full = train(request(root, vae, "full", **kw))
    part = train(request(root, vae, "part", max_ticks=2, **kw))
    resumed = train(request(root, vae, "part", resume=str(part), **kw))
    assert resumed == part and "resumed from" in (part / "log.txt").read_text()
    a, b = list_states(full)[-1], list_states(resumed)[-1]
    assert a.name == b.name
    for name in ("net", "net_ema"):
        ta, tb = load_tensors(a / f"{name}.safetensors"), load_tensors(b / f"{name}.safetensors")
        assert all(torch.equal(ta[k], tb[k]) for k in ta), name


def test_non_finite_run_stops_with_last_snapshot_intact(files, monkeypatch):
    """A MaskDiT loss that turns NaN at step 3 stops the run with the engine's message; the
    snapshot of step 2 loads, is finite, and samples."""
    from langfree.checkpoint import list_snapshots, load_snapshot
    from langfree.families.maskdit import loss as L
    from langfree.training.options import TrainingError
    from langfree.training.run import train

    root, vae = files
    real, calls = L.maskdit_loss, []

    def turning_nan(*args, **kw):
        total, stats = real(*args, **kw)
        calls.append(1)
        return (total * float("nan") if len(calls) > 2 else total), stats

    monkeypatch.setattr(L, "maskdit_loss", turning_nan)
    with pytest.raises(TrainingError, match=r"non-finite loss in phase 'main' at kimg 0\.016"):
        train(request(root, vae, "nan", kimg=0.032, tick_kimg=0.008, snap=2))
    (run,) = (root / "nan").iterdir()
    assert [p.name for p in list_snapshots(run)] == ["snapshot-000000.016"]
    family = load_snapshot(run, encoder=None)
    assert all(torch.isfinite(p).all() for p in family.net_ema.parameters())
    emb = torch.nn.functional.normalize(torch.randn(1, 16), dim=1)
    assert torch.isfinite(family.sample(emb, [0], family.SampleOptions(steps=2))).all()
    assert "non-finite loss" in (run / "log.txt").read_text()
