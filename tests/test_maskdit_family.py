"""The MaskDiT family on a tiny config with a tiny diffusers VAE: configure, the latents
producer, one loss step, sampling contract, references, snapshot round trip."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from langfree.families.base import Phase, Progress
from langfree.families.maskdit import SPEC, configure
from langfree.families.maskdit.config import PRESETS, MaskDiTConfig, MaskDiTSampleOptions
from langfree.families.maskdit.family import MaskDiTFamily

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    from test_vae_family import tiny_diffusers_vae

    path = tmp_path_factory.mktemp("maskdit") / "vae"
    tiny_diffusers_vae(path)  # 8 px -> 4×4×4 latents, scaling factor 0.3
    return path


def tiny_config(vae_dir, **kw):
    base = dict(resolution=8, latent_downsample=2, latent_channels=4,
                vae=str(vae_dir) if vae_dir is not None else None,
                cond_dim=6, hidden=32, depth=2, heads=2, patch=2, decoder_hidden=16,
                decoder_depth=1, decoder_heads=2, lr=1e-3, ema_decay=0.9)
    return MaskDiTConfig(**{**base, **kw})


def family(vae_dir, **kw):
    torch.manual_seed(0)
    fam = MaskDiTFamily(tiny_config(vae_dir, **kw))
    fam.load_vae()
    return fam


def test_configure_reads_geometry_and_fails_on_missing_vae(vae_dir, tmp_path):
    ctx = SimpleNamespace(archive=SimpleNamespace(resolution=8), encoder=SimpleNamespace(embed_dim=6),
                          request=SimpleNamespace(overrides=[]), preset=None)
    data = configure({"vae": str(vae_dir)}, ctx)
    assert (data["resolution"], data["cond_dim"], data["latent_channels"],
            data["latent_downsample"]) == (8, 6, 4, 2)
    with pytest.raises(FileNotFoundError, match="pass --vae DIR"):
        configure({"vae": str(tmp_path / "missing")}, ctx)
    with pytest.raises(ValueError, match="preset"):
        configure({"vae": str(vae_dir), "resolution": 32}, SimpleNamespace(**{**vars(ctx), "preset": "shapes32"}))
    assert SPEC.name == "maskdit" and {p for p in PRESETS} >= {"shapes32", "mmceleba256"}


def test_wrong_vae_geometry_is_refused(vae_dir):
    fam = MaskDiTFamily(tiny_config(vae_dir, latent_downsample=4, resolution=16))
    with pytest.raises(ValueError, match="factor"):
        fam.load_vae()
    with pytest.raises(ValueError, match="no VAE loaded"):
        fam.sample(torch.zeros(1, 6), [0])


def batch_from_producer(fam, n=4):
    g = torch.Generator().manual_seed(5)
    images = (torch.rand(n, 3, 8, 8, generator=g) * 255).to(torch.uint8)
    fields = fam.producers()["latents"].encode(images)
    emb = F.normalize(torch.randn(n, 6, generator=g), dim=1)
    return {**fields, "image_emb": emb}, images


def test_producer_fields_and_mirror(vae_dir):
    fam = family(vae_dir, mirror=True)
    batch, images = batch_from_producer(fam)
    assert set(batch) >= {"latents_mean", "latents_std", "latents_mean_flip", "latents_std_flip"}
    assert batch["latents_mean"].shape == (4, 4, 4, 4)
    flipped, _ = fam.vae.encode(images.flip(-1).float() / 127.5 - 1)
    assert torch.allclose(batch["latents_mean_flip"], flipped, atol=1e-6)
    p = fam.producers()["latents"]
    assert p.kind == "latents" and p.fingerprint.endswith("m")
    assert family(vae_dir).producers()["latents"].fingerprint == p.fingerprint[:-1]


def test_one_loss_step_and_mask_schedule(vae_dir):
    fam = family(vae_dir, mask_schedule="cosine")
    batch, _ = batch_from_producer(fam)
    main = fam.phases()[0]
    assert main == Phase("main", ("net",), "main") and fam.needs == {"latents", "image_emb"}
    out = fam.loss(main, fam.modules(), batch, Progress(0, 0, 100))
    assert out.stats["mask_ratio"] == pytest.approx(0.5) and "loss_mae" in out.stats
    out.loss.backward()
    fam.optimizers()["main"].step()
    end = fam.loss(main, fam.modules(), batch, Progress(10, 100, 100))
    assert end.stats["mask_ratio"] == pytest.approx(0.0) and "loss_mae" not in end.stats
    # latents are drawn fresh each time around the stored mean, then scaled by 0.3
    a, b = fam.latents(batch), fam.latents(batch)
    assert not torch.equal(a, b)
    assert torch.allclose((a + b) / 2, batch["latents_mean"] * 0.3, atol=0.3 * 4 * batch["latents_std"].max())


def test_standard_setting_needs_captions(vae_dir):
    fam = family(vae_dir, mixing_prob=0.0)
    assert {"text_emb", "has_caption"} <= fam.needs and fam.needs_captions


def test_sample_contract(vae_dir):
    fam = family(vae_dir)
    with torch.no_grad():  # give the zero-initialised output layers values
        for p in fam.net_ema.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    cond = F.normalize(torch.randn(3, 6), dim=1)
    opts = MaskDiTSampleOptions(steps=3)
    state = torch.random.get_rng_state()
    imgs = fam.sample(cond, [1, 2, 3], opts)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert imgs.shape == (3, 3, 8, 8) and imgs.min() >= -1 and imgs.max() <= 1
    assert torch.allclose(fam.sample(cond[1:2], [2], opts)[0], imgs[1], atol=1e-5)
    guided = fam.sample(cond, [1, 2, 3], MaskDiTSampleOptions(steps=3, guidance_scale=3.0))
    assert not torch.allclose(guided, imgs)
    with pytest.raises(ValueError, match="cond_dim"):
        fam.sample(torch.zeros(2, 5), [0, 1], opts)
    with pytest.raises(ValueError, match="steps"):
        MaskDiTSampleOptions(steps=0)


def test_references_and_snapshot_round_trip(vae_dir, tmp_path, monkeypatch):
    from langfree.checkpoint import load_snapshot, save_snapshot
    from langfree.families import registry

    monkeypatch.setitem(registry._FAMILIES, "maskdit", "langfree.families.maskdit")
    fam = family(vae_dir)
    with torch.no_grad():
        for p in fam.net_ema.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    refs = fam.references()
    assert refs["vae"].spec == str(vae_dir) and len(refs["vae"].digest) == 16
    assert fam.snapshot_modules() == ("net_ema",) and "vae" in fam.modules()
    snap = save_snapshot(tmp_path / "snap", fam, kimg=1.0)
    assert not (snap / "vae.safetensors").exists()  # a reference, never copied
    back = load_snapshot(snap, encoder=None)
    cond = F.normalize(torch.randn(2, 6), dim=1)
    opts = MaskDiTSampleOptions(steps=2)
    assert torch.equal(back.sample(cond, [4, 5], opts), fam.sample(cond, [4, 5], opts))


def test_import_official_checkpoint(tmp_path, monkeypatch):
    from langfree.checkpoint import load_snapshot
    from langfree.families import registry
    from langfree.families.maskdit.convert import import_official

    monkeypatch.setitem(registry._FAMILIES, "maskdit", "langfree.families.maskdit")
    cfg = tiny_config(None)
    torch.manual_seed(3)
    src = MaskDiTFamily(cfg).net
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    state = {("model.y_embedder.embedding_table.weight" if k == "model.cond_embedder.weight"
              else k): v for k, v in src.state_dict().items()}
    state["model.pos_embed"] = src.model.pos_embed.clone()  # as the official file stores it
    torch.save({"model": state, "ema": state, "opt": {}}, tmp_path / "official.pt")
    snap = import_official(tmp_path / "official.pt", tmp_path / "snap", cfg)
    fam = load_snapshot(snap, encoder=None)
    x, s, y = torch.randn(2, 4, 4, 4), torch.tensor([0.5, 2.0]), F.normalize(torch.randn(2, 6), dim=1)
    with torch.no_grad():
        assert torch.equal(fam.net_ema(x, s, y), src(x, s, y))
    torch.save({"model": state}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="no 'ema'"):
        import_official(tmp_path / "bad.pt", tmp_path / "snap2", cfg)


def test_convert_maskdit_pt_command(vae_dir, tmp_path):
    """`langfree convert maskdit-pt IN.pt OUT` (the TrainSpec converter): tensors only, the VAE
    recorded as a reference so the snapshot samples; a pickled object is refused."""
    from typer.testing import CliRunner

    from langfree.checkpoint import load_snapshot
    from langfree.cli import app

    assert SPEC.converters == {"maskdit-pt": "langfree.families.maskdit.commands:maskdit_pt"}
    cfg = tiny_config(vae_dir)
    torch.manual_seed(3)
    src = MaskDiTFamily(cfg).net
    state = {("model.y_embedder.embedding_table.weight" if k == "model.cond_embedder.weight"
              else k): v for k, v in src.state_dict().items()}
    torch.save({"model": state, "ema": state}, tmp_path / "official.pt")
    args = ["convert", "maskdit-pt", str(tmp_path / "official.pt"), str(tmp_path / "snap"),
            "--size", "MaskDiT-S/2", "--cond-dim", "6", "--resolution", "8", "--vae", str(vae_dir)]
    args += [f"--set={kv}" for kv in ("hidden=32", "depth=2", "heads=2", "decoder_hidden=16",
                                      "decoder_depth=1", "decoder_heads=2")]
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 0, run.output
    fam = load_snapshot(tmp_path / "snap", encoder=None)
    assert "vae" in fam.references()
    images = fam.sample(F.normalize(torch.randn(1, 6), dim=1), [0], MaskDiTSampleOptions(steps=2))
    assert images.shape == (1, 3, 8, 8)

    torch.save({"model": SimpleNamespace(x=1), "ema": {}}, tmp_path / "pickled.pt")
    bad = CliRunner().invoke(app, args[:2] + [str(tmp_path / "pickled.pt"), str(tmp_path / "s2")]
                             + args[4:])
    assert bad.exit_code == 2 and "error:" in bad.output
    missing = CliRunner().invoke(app, args[:2] + [str(tmp_path / "none.pt"), str(tmp_path / "s3")])
    assert missing.exit_code == 2 and "not found" in missing.output
