"""MaskDiT loss: EDM formulas numerically, the visible/masked split, MAE target normalisation,
mask-ratio schedules, condition augmentation / dropout / mixing, and a tiny overfit."""

import math

import pytest
import torch
import torch.nn.functional as F

from langfree.families.maskdit import loss as L
from langfree.families.maskdit.networks import EDMDenoiser, MaskDiT, random_mask

pytestmark = pytest.mark.usefixtures("one_thread")


def test_edm_weight_and_sigma_distribution():
    s = torch.tensor([0.1, 0.5, 2.0])
    want = torch.tensor([(0.01 + 0.25) / (0.1 * 0.5) ** 2, (0.25 + 0.25) / 0.0625,
                         (4 + 0.25) / 1.0])
    assert torch.allclose(L.edm_weight(s, 0.5), want)
    torch.manual_seed(0)
    ln = L.sample_sigma(200_000).log()
    assert abs(ln.mean().item() + 1.2) < 0.02 and abs(ln.std().item() - 1.2) < 0.02


def test_preconditioning_formulas():
    # D = c_skip·x + c_out·F(c_in·x, ln σ / 4): check against a net that records its inputs
    class Probe(torch.nn.Module):
        tokens, patch, decoder_depth = 4, 2, 0

        def forward(self, x, c_noise, y, mask=None):
            self.seen = (x, c_noise)
            return torch.ones_like(x)

    den = EDMDenoiser(Probe(), 0.5)
    x, s = torch.randn(2, 4, 4, 4), torch.tensor([0.2, 3.0])
    out = den(x, s, torch.zeros(2, 3))
    sr = s.reshape(-1, 1, 1, 1)
    c_skip, c_out = 0.25 / (sr**2 + 0.25), sr * 0.5 / (sr**2 + 0.25).sqrt()
    assert torch.allclose(out, c_skip * x + c_out)
    assert torch.allclose(den.model.seen[0], x / (sr**2 + 0.25).sqrt())
    assert torch.allclose(den.model.seen[1], s.log() / 4)


def test_denoising_loss_visible_only():
    clean = torch.zeros(1, 1, 4, 4)
    den = torch.zeros(1, 1, 4, 4)
    den[0, 0, :2, :2] = 1.0  # error only in token 0 (patch 2, raster order)
    sigma = torch.tensor([0.5])
    w = L.edm_weight(sigma, 0.5).item()
    m = random_mask(1, 4, 0.5, generator=torch.Generator().manual_seed(0))
    got = L.denoising_loss(den, clean, sigma, 0.5, 2, m)
    want = w * 1.0 / 2 if m.masked[0, 0] == 0 else 0.0  # mean over the 2 visible tokens
    assert got.item() == pytest.approx(want)
    assert L.denoising_loss(den, clean, sigma, 0.5, 2, None).item() == pytest.approx(w * 4 / 16)


def test_mae_target_is_per_patch_normalised_noisy_input():
    g = torch.Generator().manual_seed(0)
    noisy = torch.randn(2, 3, 4, 4, generator=g) * 3 + 1
    patches = L.patchify(noisy, 2)  # [2, 4, 12]
    target = (patches - patches.mean(-1, keepdim=True)) / (patches.var(-1, keepdim=True) + 1e-6).sqrt()
    # a prediction equal to the normalised target has zero MAE loss
    pred = torch.einsum("nhwpqc->nchpwq", target.reshape(2, 2, 2, 2, 2, 3)).reshape(2, 3, 4, 4)
    masked = torch.tensor([[1.0, 0, 1, 0], [0, 1, 1, 1]])
    assert torch.allclose(L.mae_loss(noisy, pred, masked, 2), torch.zeros(2), atol=1e-10)
    # error on a visible patch does not count; on a masked one it does, averaged over masked
    pred2 = pred.clone()
    pred2[0, :, :2, 2:] += 1.0  # token 1 of sample 0: visible
    pred2[1, :, :2, 2:] += 1.0  # token 1 of sample 1: masked (1 of 3)
    got = L.mae_loss(noisy, pred2, masked, 2)
    assert got[0].item() == pytest.approx(0, abs=1e-10)
    assert got[1].item() == pytest.approx(1 / 3)
    assert torch.allclose(L.patchify(pred, 2), target)


def test_mask_schedules():
    assert L.mask_ratio_at(0.7, 0.5) == 0.5
    assert L.mask_ratio_at(0.0, 0.5, "cosine") == pytest.approx(0.5)
    assert L.mask_ratio_at(1.0, 0.5, "cosine", ratio_min=0.1) == pytest.approx(0.1)
    assert L.mask_ratio_at(0.5, 0.5, "cosine", power=4) == pytest.approx(0.5 * math.cos(math.pi / 4) ** 4)
    with pytest.raises(ValueError, match="choose one of"):
        L.mask_ratio_at(0.5, 0.5, "cos4")


def test_condition_augmentation():
    torch.manual_seed(0)
    c = F.normalize(torch.randn(4000, 512), dim=1)
    out = L.augment_condition(3.0 * c, 1.2)
    assert torch.allclose(out.norm(dim=1), torch.ones(4000), atol=1e-5)
    cos = (out * c).sum(1)
    # u ⟂ c almost surely at 512 d, so cos = 1/sqrt(1 + p²); E over p ~ N(0, 1.2²) = 0.747
    assert abs(cos.mean().item() - 0.747) < 0.01
    assert torch.allclose(L.augment_condition(3.0 * c, 0.0), c, atol=1e-6)


def test_condition_dropout_and_mixing():
    torch.manual_seed(0)
    c = torch.ones(10000, 4)
    d = L.drop_condition(c, 0.1)
    zero = (d.abs().sum(1) == 0).float().mean().item()
    assert abs(zero - 0.1) < 0.01 and torch.all((d == 0) | (d == 1))
    img, txt = torch.ones(1000, 4), -torch.ones(1000, 4)
    has = torch.arange(1000) % 2 == 0
    mixed = L.mix_conditions(img, txt, has, 0.0)  # standard: captions where present
    assert torch.all(mixed[has] < 0) and torch.all(mixed[~has] > 0)
    assert torch.equal(L.mix_conditions(img, txt, has, 1.0), img)


def tiny_denoiser():
    torch.manual_seed(0)
    net = MaskDiT(input_size=4, in_channels=2, cond_dim=3, hidden=32, depth=2, heads=2, patch=2,
                  decoder_hidden=16, decoder_depth=1, decoder_heads=2)
    return EDMDenoiser(net, 0.5)


def test_loss_stats_and_mask_token_in_graph():
    den = tiny_denoiser()
    x, c = torch.randn(4, 2, 4, 4) * 0.5, torch.randn(4, 3)
    total, stats = L.maskdit_loss(den, x, c, mask_ratio=0.5)
    assert total.ndim == 0 and {"loss_dsm", "loss_mae"} <= set(stats)
    total, stats = L.maskdit_loss(den, x, c, mask_ratio=0.0)
    assert "loss_mae" not in stats
    total.backward()
    assert den.model.mask_token.grad is not None  # zero term keeps it in the graph


def test_tiny_overfit_loss_decreases():
    # A test-only optimisation (not a training loop in src): 4 fixed latents, 100 Adam steps.
    # The loss is measured before and after on the same fixed draw of σ, noise and masks
    # (64 copies of each latent), so the per-step noise of σ does not hide the trend.
    den = tiny_denoiser()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 2, 4, 4, generator=g) * 0.5
    c = F.normalize(torch.randn(4, 3, generator=g), dim=1)

    def held_out():
        with torch.random.fork_rng():
            torch.manual_seed(99)
            with torch.no_grad():
                return L.maskdit_loss(den, x.repeat(64, 1, 1, 1), c.repeat(64, 1),
                                      mask_ratio=0.5)[0].item()

    before = held_out()
    opt = torch.optim.Adam(den.parameters(), lr=1e-2)
    torch.manual_seed(2)
    for _ in range(100):
        total, _ = L.maskdit_loss(den, x.repeat(4, 1, 1, 1), c.repeat(4, 1), mask_ratio=0.5)
        opt.zero_grad()
        total.backward()
        opt.step()
    after = held_out()
    assert after < 0.85 * before, (before, after)


def test_ratio_too_small_to_mask_a_token_trains_unmasked():
    # cosine schedule tail: int(16·(1 - 1e-60)) = 16 visible tokens -> no mask, no NaN MAE
    den = tiny_denoiser()
    total, stats = L.maskdit_loss(den, torch.randn(2, 2, 4, 4), torch.randn(2, 3), mask_ratio=1e-60)
    assert torch.isfinite(total) and "loss_mae" not in stats
