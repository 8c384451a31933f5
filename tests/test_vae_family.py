"""The small KL autoencoder, its loss and the latent-space loader (diffusers dirs and langfree
runs): shapes, formulas, a tiny overfit, failures that say what to pass."""

import math

import pytest
import torch

from langfree.families.base import Phase, Progress
from langfree.families.vae import loss as L
from langfree.families.vae.config import PRESETS, VAEConfig
from langfree.families.vae.family import VAEFamily
from langfree.families.vae.latent_space import VAE_HINT, load_vae, measure, vae_geometry
from langfree.families.vae.networks import DiagonalGaussian, KLAutoencoder, PatchDiscriminator

pytestmark = pytest.mark.usefixtures("one_thread")


def test_shapes_and_factor():
    torch.manual_seed(0)
    ae = KLAutoencoder(width=8, channel_mult=(1, 2, 2), latent_channels=4)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    post = ae.encode(x)
    assert post.mean.shape == post.std.shape == (2, 4, 4, 4) and ae.downsample == 4
    recon, _ = ae(x)
    assert recon.shape == x.shape
    assert PatchDiscriminator(8, 2)(x).shape == (2, 1, 4, 4)
    assert VAEConfig(channel_mult=(1, 2, 4, 4), resolution=64).downsample == 8
    with pytest.raises(ValueError, match="not divisible"):
        VAEConfig(resolution=30)


def test_kl_formula_and_psnr():
    mean, logvar = torch.tensor([[0.5, -1.0]]), torch.tensor([[0.0, math.log(4.0)]])
    kl = DiagonalGaussian(mean, logvar).kl()
    want = 0.5 * (0.25 + 1 - 1 - 0) + 0.5 * (1 + 4 - 1 - math.log(4))
    assert kl.item() == pytest.approx(want)
    assert DiagonalGaussian(torch.zeros(1, 3), torch.zeros(1, 3)).kl().item() == 0
    x = torch.zeros(1, 3, 4, 4)
    assert L.psnr(x, x + 0.1).item() == pytest.approx(10 * math.log10(4 / 0.01), rel=1e-5)
    stats = L.latent_stats(torch.randn(1000) * 4)
    assert stats["scale"] == pytest.approx(0.25, rel=0.1)


def test_family_overfits_and_reports_psnr():
    # test-only optimisation of the family's main-phase loss on 4 images
    torch.manual_seed(0)
    cfg = VAEConfig(resolution=8, width=8, channel_mult=(1, 2), mirror=False, lr=3e-3)
    fam = VAEFamily(cfg)
    g = torch.Generator().manual_seed(1)
    coarse = torch.rand(4, 3, 2, 2, generator=g) * 2 - 1
    batch = {"image": torch.nn.functional.interpolate(coarse, size=8)}
    opt, main = fam.optimizers()["main"], Phase("main", ("autoencoder",), "main")
    first = last = None
    for step in range(80):
        out = fam.loss(main, fam.modules(), batch, Progress(step, 4 * step, 400))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        first = first if first is not None else out.stats["psnr"].item()
        last = out.stats["psnr"].item()
    assert last > first + 5, (first, last)
    assert {"rec", "kl", "latent_std"} <= set(out.stats)
    assert fam.autoencoder.latent_std.item() != 1.0  # the running std moved
    assert fam.phases() == [main]  # no discriminator phase without disc_start


def test_discriminator_phase_is_zero_before_start():
    fam = VAEFamily(VAEConfig(resolution=8, width=8, channel_mult=(1, 2), disc_start=5,
                              disc_width=8))
    assert [p.name for p in fam.phases()] == ["main", "disc"]
    batch = {"image": torch.rand(2, 3, 8, 8) * 2 - 1}
    disc = fam.phases()[1]
    early = fam.loss(disc, fam.modules(), batch, Progress(0, 0, 100))
    assert early.loss.item() == 0 and early.loss.requires_grad
    late = fam.loss(disc, fam.modules(), batch, Progress(5, 10, 100))
    assert late.loss.item() > 0 and "d_hinge" in late.stats
    main = fam.loss(fam.phases()[0], fam.modules(), batch, Progress(5, 10, 100))
    assert "g_adv" in main.stats


def test_missing_vae_path_names_what_to_pass(tmp_path):
    for fn in (load_vae, vae_geometry):
        with pytest.raises(FileNotFoundError, match="pass --vae DIR"):
            fn(str(tmp_path / "nope"))
        with pytest.raises(ValueError, match="no VAE given"):
            fn(None)
        with pytest.raises(ValueError, match="neither a diffusers"):
            fn(str(tmp_path))
    assert "diffusers AutoencoderKL" in VAE_HINT


def tiny_diffusers_vae(path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2,
                        block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4,
                        sample_size=8, scaling_factor=0.3)
    vae.save_pretrained(str(path), safe_serialization=True)
    return vae


def test_diffusers_directory_loads_with_its_scaling_factor(tmp_path):
    ref = tiny_diffusers_vae(tmp_path / "vae")
    assert vae_geometry(str(tmp_path / "vae")) == (4, 2)
    space = load_vae(str(tmp_path / "vae"))
    assert (space.channels, space.downsample, space.scale, space.kind) == (4, 2, 0.3, "diffusers")
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    mean, std = space.encode(x)
    want = ref.encode(x).latent_dist
    assert torch.allclose(mean, want.mean, atol=1e-6) and torch.allclose(std, want.std, atol=1e-6)
    assert space.decode(mean).shape == (2, 3, 8, 8)
    stats = measure(space, x)
    assert stats["scale"] == 0.3 and math.isfinite(stats["psnr"]) and stats["latent_std"] > 0


def test_presets_are_valid():
    assert PRESETS["shapes32"].downsample == 4
    fam = VAEFamily(PRESETS["shapes32"])
    assert sum(p.numel() for p in fam.autoencoder.parameters()) < 1_000_000
    # prior sampling is per seed and leaves the global RNG alone
    state = torch.random.get_rng_state()
    a = fam.sample(None, [1, 2])
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.allclose(a[1], fam.sample(None, [2])[0], atol=1e-5) and a.shape == (2, 3, 32, 32)


def test_rec_loss_l2_is_mean_squared_error_and_bad_kind_is_refused():
    x, recon = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.5)
    assert L.reconstruction_loss(x, recon, "l1").item() == pytest.approx(0.5)
    assert L.reconstruction_loss(x, recon, "l2").item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="rec_loss"):
        VAEConfig(rec_loss="l3")
