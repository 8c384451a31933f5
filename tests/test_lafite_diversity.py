"""LAFITE mode-seeking term (issue 9: different seeds must give different images)."""

from __future__ import annotations

import pytest
import torch

from langfree.families.base import Progress
from langfree.families.lafite import loss as losses
from test_lafite_family_helpers import (
    ToyEncoder,
    fake_batch,
    tiny_config,
    use_stand_ins_if_needed,
)


@pytest.fixture(autouse=True)
def _stand_ins(monkeypatch):
    torch.set_num_threads(1)
    use_stand_ins_if_needed(monkeypatch)


def _toy_images(a: torch.Tensor, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """A generator whose z-dependence is the scalar a: [M, z] -> [M, 3, 4, 4]."""
    proj = torch.randn(z.shape[1], 48, generator=torch.Generator().manual_seed(0))
    return torch.tanh(a * (z @ proj) + c).view(-1, 3, 4, 4)


def test_mode_seeking_gradient_increases_z_dependence_until_the_target():
    gen = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(8, 6, generator=gen), torch.randn(8, 6, generator=gen)
    c = torch.randn(1, 48, generator=gen)
    a = torch.tensor(0.01, requires_grad=True)          # nearly collapsed: seeds barely matter
    loss, ratio = losses.mode_seeking_loss(_toy_images(a, z1, c), _toy_images(a, z2, c), z1, z2,
                                           target=0.15)
    assert 0 < ratio < 0.15
    (grad,) = torch.autograd.grad(loss, a)
    assert grad < 0                                      # descending the loss raises a
    a_big = torch.tensor(5.0, requires_grad=True)        # already as varied as the target
    loss, ratio = losses.mode_seeking_loss(_toy_images(a_big, z1, c), _toy_images(a_big, z2, c),
                                           z1, z2, target=0.15)
    assert ratio > 0.15
    (grad,) = torch.autograd.grad(loss, a_big)
    assert grad == 0                                     # hinge: no push past data-like spread


def test_mode_seeking_ratio_reads_as_pixel_distance_in_unit_range():
    z1, z2 = torch.zeros(2, 4), torch.ones(2, 4) * losses.MEAN_ABS_GAUSSIAN_DIFF
    black, white = -torch.ones(2, 3, 2, 2), torch.ones(2, 3, 2, 2)
    _, ratio = losses.mode_seeking_loss(black, white, z1, z2, target=1.0)
    assert ratio == pytest.approx(1.0)                   # black vs white at a typical z distance
    _, ratio = losses.mode_seeking_loss(black, black, z1, z2, target=1.0)
    assert ratio == 0.0


def test_family_g_phase_adds_the_term_and_reaches_the_mapping_network():
    from langfree.families.lafite.family import LafiteFamily

    def mapping_grad(weight):
        torch.manual_seed(0)
        # target 5: above any ratio at init, so the hinge is active
        fam = LafiteFamily(tiny_config(mode_seeking_weight=weight, mode_seeking_target=5.0,
                                       style_mixing=0.0),
                           ToyEncoder(16, 8))
        nets = fam.modules()
        nets["D"].requires_grad_(False)
        torch.manual_seed(1)
        out = fam.loss(fam.phases()[0], nets, fake_batch(fam.config), Progress(0, 0, 1))
        out.loss.backward()
        grads = [p.grad.flatten() for n, p in nets["G"].named_parameters()
                 if "map" in n and p.grad is not None]
        return torch.cat(grads), out.stats

    without, stats0 = mapping_grad(0.0)
    with_ms, stats1 = mapping_grad(10.0)
    assert "G/seed_distance" in stats1 and "G/seed_distance" not in stats0
    assert not torch.allclose(without, with_ms)          # the term flows through z's path


def test_mode_seeking_config_is_validated():
    with pytest.raises(ValueError, match="mode_seeking"):
        tiny_config(mode_seeking_weight=-1.0)
    with pytest.raises(ValueError, match="mode_seeking"):
        tiny_config(mode_seeking_target=0.0)


def test_condition_ramp_rises_linearly_and_is_off_by_default():
    assert losses.condition_ramp(tiny_config(), 0) == 1.0                # the paper: from step 0
    cfg = tiny_config(condition_rampup_kimg=2.0)
    assert losses.condition_ramp(cfg, 0) == 0.0
    assert losses.condition_ramp(cfg, 1000) == pytest.approx(0.5)
    assert losses.condition_ramp(cfg, 5000) == 1.0


def test_at_ramp_zero_neither_g_nor_d_reads_the_condition():
    from langfree.families.lafite.family import LafiteFamily

    fam = LafiteFamily(tiny_config(condition_rampup_kimg=4.0, style_mixing=0.0), ToyEncoder(16, 8))
    nets = fam.modules()
    batch = fake_batch(fam.config)
    other = dict(batch, image_emb=torch.randn_like(batch["image_emb"]))  # different conditions

    def d_phase(b, nimg):
        torch.manual_seed(3)
        return fam.loss(fam.phases()[-2], nets, b, Progress(0, nimg, 10_000)).loss  # phase D

    assert fam.phases()[-2].name == "D"
    assert torch.equal(d_phase(batch, 0), d_phase(other, 0))       # unconditional at the start
    assert not torch.equal(d_phase(batch, 2000), d_phase(other, 2000))  # conditioned halfway
