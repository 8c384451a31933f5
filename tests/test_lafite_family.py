"""LAFITE family: conditioning math, the contrastive loss, every phase, sampling."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from langfree.families.base import Progress
from langfree.families.lafite import conditioning
from langfree.families.lafite import loss as losses
from langfree.families.lafite.config import PRESETS, LafiteConfig, preset
from langfree.families.lafite.perturb import (
    PerturbConfig,
    PerturbFamily,
    PerturbNet,
    load_perturbation,
    save_perturbation,
)
from test_lafite_family_helpers import (
    ToyEncoder,
    fake_batch,
    networks_available,
    tiny_config,
    use_stand_ins_if_needed,
)


@pytest.fixture(autouse=True)
def _stand_ins(monkeypatch):
    torch.set_num_threads(1)
    use_stand_ins_if_needed(monkeypatch)


def _family(**changes):
    from langfree.families.lafite.family import LafiteFamily

    return LafiteFamily(tiny_config(**changes), ToyEncoder(16, 8))


# ------------------------------------------------------------------------ conditioning
def test_gaussian_official_weighting_gives_cos_about_032():
    torch.manual_seed(0)
    image = F.normalize(torch.randn(4096, 512), dim=-1)
    eps = conditioning.random_directions(image.shape, image.device)
    h = conditioning.gaussian_pseudo_text(image, eps, 0.25, 0.75)
    cos = (h * image).sum(-1)
    assert torch.allclose(h.norm(dim=-1), torch.ones(4096), atol=1e-5)
    expected = 0.25 / math.hypot(0.25, 0.75)     # ε̂ ⟂ î in high dimension
    assert abs(cos.mean().item() - expected) < 0.01
    # the older 0.5/0.5 weighting is much closer to the image feature
    h_old = conditioning.gaussian_pseudo_text(image, eps, 0.5, 0.5)
    assert abs((h_old * image).sum(-1).mean().item() - 0.5 / math.hypot(0.5, 0.5)) < 0.01


def test_mixing_is_per_sample_and_standard_uses_noised_captions():
    cfg = tiny_config(c_dim=1024, mixing_prob=0.5)
    batch = fake_batch(cfg, B=2000)
    torch.manual_seed(1)
    h = conditioning.condition_features(cfg, batch)
    cos_text = (h * batch["text_emb"]).sum(-1)
    from_text = cos_text > 0.8                   # t̃ = norm(0.9 t̂ + 0.1 ε̂): cos ≈ 0.99
    assert 0.4 < from_text.float().mean().item() < 0.6
    cos_image = (h * batch["image_emb"]).sum(-1)
    assert (cos_image[~from_text] > 0.15).all()   # the rest are pseudo features of î

    standard = conditioning.condition_features(cfg.replace(mixing_prob=0.0), batch)
    assert ((standard * batch["text_emb"]).sum(-1) > 0.95).all()


def test_captions_are_read_only_where_a_sample_has_one():
    """Language-free never reads captions; with mixing, an uncaptioned sample takes its pseudo
    feature (issue 10: partly captioned archives). An archive with no captions at all is refused
    before training (families.spec, tested in test_faults.py)."""
    cfg = tiny_config(mixing_prob=1.0)
    batch = fake_batch(cfg, captions=False)
    batch["text_emb"] = torch.full_like(batch["text_emb"], float("nan"))
    assert torch.isfinite(conditioning.condition_features(cfg, batch)).all()
    torch.manual_seed(0)
    standard = conditioning.condition_features(cfg.replace(mixing_prob=0.0), batch)
    torch.manual_seed(0)
    pseudo = conditioning.condition_features(cfg, batch)
    assert torch.isfinite(standard).all() and torch.allclose(standard, pseudo)


def test_none_conditioning_is_the_image_feature():
    cfg = tiny_config(conditioning="none")
    batch = fake_batch(cfg)
    h = conditioning.condition_features(cfg, batch)
    assert torch.allclose(h, batch["image_emb"], atol=1e-6)


class _PairDataset(torch.utils.data.Dataset):
    """(image feature, caption feature) pairs with a consistent "modality gap", key contract."""

    def __init__(self, n: int, d: int, captioned: bool = True):
        g = torch.Generator().manual_seed(0)
        self.image = F.normalize(torch.randn(n, d, generator=g), dim=-1)
        shift = F.normalize(torch.randn(d, generator=g), dim=0)
        self.caption = F.normalize(self.image + 1.5 * shift, dim=-1)
        self.captioned = captioned

    def __len__(self):
        return len(self.image)

    def __getitem__(self, key):
        i = key % len(self.image)
        return {"index": i, "image_emb": self.image[i], "text_emb": self.caption[i],
                "has_caption": self.captioned}


def test_learned_perturbation_trains_on_the_engine_towards_captions(tmp_path):
    from langfree.checkpoint import list_snapshots
    from langfree.training.loop import TrainOptions, train

    N, D = 256, 16
    data = _PairDataset(N, D)
    torch.manual_seed(0)
    fam = PerturbFamily(PerturbConfig(dim=D, hidden=32, layers=3, lr=3e-3))
    before = (fam.perturb(data.image) * data.caption).sum(-1).mean().item()
    run = train(fam, data, TrainOptions(outdir=str(tmp_path / "runs"), kimg=19.2, batch=64,
                                        tick_kimg=6.4, snap=0), {})
    after = (fam.perturb(data.image) * data.caption).sum(-1).mean().item()
    assert after > before + 0.1
    snapshot = list_snapshots(run)[-1]
    again, meta = load_perturbation(run, dim=D)   # a run dir resolves to its latest snapshot
    assert meta["hidden"] == 32 and (snapshot / "perturb.safetensors").is_file()
    torch.manual_seed(3)
    a = fam.perturb.eval()(data.image)
    torch.manual_seed(3)
    assert torch.equal(a, again(data.image))
    with pytest.raises(ValueError, match="retrain"):
        load_perturbation(run, dim=D + 1)
    save_perturbation(again, {"dim": D, "hidden": 32, "layers": 3}, tmp_path / "old")
    assert load_perturbation(tmp_path / "old", dim=D)[1]["hidden"] == 32   # the older layout


def test_perturbation_without_captions_learns_nothing():
    fam = PerturbFamily(PerturbConfig(dim=8, hidden=8, layers=2))
    batch = {"image_emb": F.normalize(torch.randn(4, 8), dim=-1),
             "text_emb": torch.zeros(4, 8), "has_caption": torch.zeros(4, dtype=torch.bool)}
    out = fam.loss(fam.phases()[0], fam.modules(), batch, None)
    assert out.loss.item() == 0 and out.stats["pairs"] == 0


# ------------------------------------------------------------------------- contrastive
def test_infonce_matches_hand_computation():
    torch.manual_seed(0)
    a, b, tau = torch.randn(5, 7), torch.randn(5, 7), 0.3
    an, bn = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    s = [[float((an[i] * bn[j]).sum()) / tau for j in range(5)] for i in range(5)]
    rows = sum(-s[i][i] + math.log(sum(math.exp(x) for x in s[i])) for i in range(5)) / 5
    cols = sum(-s[j][j] + math.log(sum(math.exp(s[i][j]) for i in range(5))) for j in range(5)) / 5
    got = losses.contrastive_loss(a, b, tau, "infonce", lam=0.5).item()
    assert abs(got - 0.5 * (rows + cols)) < 1e-5
    assert abs(losses.contrastive_loss(a, b, tau, lam=1.0).item() - rows) < 1e-5
    # perfectly aligned pairs with a low temperature -> loss near 0; shuffled -> large
    assert losses.contrastive_loss(a, a, 0.01).item() < 1e-3
    assert losses.contrastive_loss(a, a.roll(1, 0), 0.01).item() > 5


def test_official_exp_cos_form_differs_and_is_documented_choice():
    torch.manual_seed(0)
    a, b = torch.randn(6, 4), torch.randn(6, 4)
    s = F.normalize(a, dim=1) @ F.normalize(b, dim=1).t()
    logits = torch.exp(s / 0.5)
    want = 0.5 * (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.t(), torch.arange(6)))
    got = losses.contrastive_loss(a, b, 0.5, "official_exp_cos")
    assert torch.allclose(got, want)
    assert not torch.allclose(got, losses.contrastive_loss(a, b, 0.5, "infonce"))
    with pytest.raises(ValueError):
        LafiteConfig(contrastive_form="exp")


def test_queued_negatives_join_the_rows_direction_only():
    torch.manual_seed(0)
    a, b, bank = torch.randn(4, 6), torch.randn(4, 6), torch.randn(9, 6)
    an, bn, kn = (F.normalize(t, dim=1) for t in (a, b, bank))
    sim = an @ bn.t() / 0.5
    rows = F.cross_entropy(torch.cat([sim, an @ kn.t() / 0.5], 1), torch.arange(4))
    cols = F.cross_entropy(sim.t(), torch.arange(4))
    got = losses.contrastive_loss(a, b, 0.5, lam=0.7, negatives=bank)
    assert torch.allclose(got, 0.7 * rows + 0.3 * cols)
    assert torch.equal(losses.contrastive_loss(a, b, 0.5, negatives=bank[:0]),
                       losses.contrastive_loss(a, b, 0.5))
    # a negative equal to a's own direction competes with the positive: the loss grows
    near = losses.contrastive_loss(a, a, 0.1, negatives=a[:1] + 1e-3)
    assert near > losses.contrastive_loss(a, a, 0.1) + 0.05  # ≈ 0.5 · log 2 / 4


def test_condition_bank_is_a_fifo_that_fills_then_wraps():
    bank = losses.ConditionBank(5, 2)
    assert bank.negatives().shape == (0, 2)
    bank.push(torch.tensor([[1.0, 0], [2, 0], [3, 0]]))
    assert bank.negatives()[:, 0].tolist() == [1, 2, 3]
    bank.push(torch.tensor([[4.0, 0], [5, 0], [6, 0]]))
    assert sorted(bank.negatives()[:, 0].tolist()) == [2, 3, 4, 5, 6]   # 1, the oldest, is gone
    assert "bank" in bank.state_dict() and "head" in bank.state_dict()  # saved and resumed


def test_family_feeds_the_bank_once_per_step_and_saves_it():
    torch.manual_seed(0)
    fam = _family(contrastive_negatives=16)
    assert "cond_bank" in fam.modules()
    batch = fake_batch(fam.config)
    phases = {p.name: p for p in fam.phases()}
    fam.loss(phases["G"], fam.modules(), batch, Progress(0, 0, 1)).loss.backward()
    assert int(fam.bank.filled) == 0                # the G phase reads the bank, never writes
    fam.loss(phases["D"], fam.modules(), batch, Progress(0, 0, 1)).loss.backward()
    assert int(fam.bank.filled) == len(batch["image"])


@pytest.mark.parametrize("reuse", [False, True])
def test_reuse_fakes_skips_the_d_phase_generator_pass(reuse):
    torch.manual_seed(0)
    fam = _family(reuse_fakes=reuse)
    nets = fam.modules()
    phases = {p.name: p for p in fam.phases()}
    calls = []
    hook = fam.G.register_forward_hook(lambda m, args, out: calls.append(out.detach().clone()))
    seen = []
    d_hook = fam.D.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().clone()))
    batch = fake_batch(fam.config)
    fam.loss(phases["G"], nets, batch, Progress(0, 0, 1)).loss.backward()
    fam.loss(phases["D"], nets, batch, Progress(0, 0, 1)).loss.backward()
    hook.remove(), d_hook.remove()
    assert len(calls) == (1 if reuse else 2)
    # D's phase judges the G phase's own fakes exactly when reusing, fresh ones otherwise
    assert torch.equal(seen[1], calls[0]) == reuse
    assert not fam._fakes                                   # nothing kept past the D phase
    # another micro-batch (or step) never picks up this one's fakes
    fam.loss(phases["G"], nets, batch, Progress(1, 0, 1))
    other = fake_batch(fam.config)
    calls.clear()
    hook = fam.G.register_forward_hook(lambda m, args, out: calls.append(out))
    fam.loss(phases["D"], nets, other, Progress(1, 0, 1))
    hook.remove()
    assert len(calls) == 1


def test_clip_view_follows_official_recipe_for_224_px_clip():
    img = torch.zeros(2, 3, 32, 32)
    padded = losses.clip_view(img, 224)
    assert padded.shape == (2, 3, 224, 224) and padded.max() == 1.0 and padded.min() == 0.0
    assert losses.clip_view(img, 32) is img                 # small CLIP: unchanged
    big = losses.clip_view(torch.zeros(1, 3, 256, 256), 224)
    assert big.shape == (1, 3, 224, 224)


# ------------------------------------------------------------------------------ phases
def test_every_phase_runs_and_backprops_into_its_module():
    torch.manual_seed(0)
    fam = _family(pl_weight=2.0, r1_gamma=1.0)
    nets = fam.modules()
    assert [p.name for p in fam.phases()] == ["G", "Greg", "D", "Dreg"]
    assert {p.name: p.interval for p in fam.phases()} == {"G": 1, "Greg": 4, "D": 1, "Dreg": 16}
    batch = fake_batch(fam.config)
    for phase in fam.phases():
        for m in nets.values():
            m.requires_grad_(False)
            m.zero_grad(set_to_none=True)
        for name in phase.modules:
            nets[name].requires_grad_(True)
        out = fam.loss(phase, nets, batch, Progress(0, 0, 1))
        assert out.loss.ndim == 0 and torch.isfinite(out.loss)
        out.loss.backward()
        grads = [p.grad for n in phase.modules for p in nets[n].parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), phase.name
        other = "D" if phase.modules == ("G",) else "G"
        assert all(p.grad is None for p in nets[other].parameters())
    assert fam.modules()["G_pl"].pl_mean.item() > 0        # path-length mean was updated
    stats = fam.loss(fam.phases()[0], nets, batch, Progress(0, 0, 1)).stats
    assert {"G/adv", "G/itc", "G/itd"} <= set(stats)


def test_itc_uses_the_encoder_and_gradients_reach_g_through_clip():
    torch.manual_seed(0)
    fam = _family(d_contrastive_weight=0.0, style_mixing=0.0)
    nets = fam.modules()
    nets["D"].requires_grad_(False)
    batch = fake_batch(fam.config)
    G_phase = fam.phases()[0]
    with_itc = fam.loss(G_phase, nets, batch, Progress(0, 0, 1))
    assert "G/itc" in with_itc.stats and "G/itd" not in with_itc.stats
    fam_no = _family(d_contrastive_weight=0.0, clip_contrastive_weight=0.0)
    assert "G/itc" not in fam_no.loss(G_phase, fam_no.modules(), batch, Progress(0, 0, 1)).stats


def test_optimizer_uses_lazy_regularisation_ratio():
    fam = _family(lr=0.0025, betas=(0.0, 0.99))
    g = fam.optimizers()["G"].param_groups[0]
    assert abs(g["lr"] - 0.0025 * 4 / 5) < 1e-12 and abs(g["betas"][1] - 0.99 ** (4 / 5)) < 1e-12
    d = fam.optimizers()["D"].param_groups[0]
    assert abs(d["lr"] - 0.0025 * 16 / 17) < 1e-12
    assert fam.optimizers() is fam.optimizers()


def test_mirror_flips_reals_only_when_enabled():
    batch = fake_batch(tiny_config(), B=64)
    torch.manual_seed(0)
    flipped = _family(mirror=True)._reals(batch)
    same = (flipped == batch["image"]).flatten(1).all(1)
    mirrored = (flipped == batch["image"].flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all() and 10 < int(mirrored.sum()) < 54
    assert torch.equal(_family(mirror=False)._reals(batch), batch["image"])


def test_encoder_width_mismatch_is_a_clear_error():
    from langfree.families.lafite.family import LafiteFamily

    with pytest.raises(ValueError, match="c_dim=32"):
        LafiteFamily(tiny_config(), ToyEncoder(32, 8))


# ----------------------------------------------------------------------------- sampling
def test_sample_is_deterministic_per_seed_and_leaves_global_rng_alone():
    torch.manual_seed(0)
    fam = _family()
    cond = F.normalize(torch.randn(3, 16), dim=-1)
    state = torch.get_rng_state()
    a = fam.sample(cond, [5, 6, 7])
    assert torch.equal(torch.get_rng_state(), state)
    b = fam.sample(cond, [5, 6, 7])
    assert torch.equal(a, b) and a.shape == (3, 3, 8, 8) and a.abs().max() <= 1
    single = fam.sample(cond[1:2], [6])
    assert torch.allclose(single[0], a[1], atol=1e-5)
    assert not torch.allclose(a[0], fam.sample(cond[:1], [99])[0])
    random = fam.SampleOptions(noise_mode="random")
    r1 = fam.sample(cond, [5, 6, 7], random)
    assert torch.equal(r1, fam.sample(cond, [5, 6, 7], random))
    with pytest.raises(ValueError, match="len\\(seeds\\)"):
        fam.sample(cond, [1, 2])


def test_learned_family_has_perturb_module_and_needs_weights(tmp_path):
    from langfree.families.lafite.family import LafiteFamily

    fam = LafiteFamily(tiny_config(conditioning="learned"), None)
    assert "perturb" in fam.modules()
    net = PerturbNet(16, 16, 4)
    save_perturbation(net, {"dim": 16, "hidden": 16, "layers": 4}, tmp_path)
    fam.load_perturbation(tmp_path)
    assert torch.equal(fam.perturb.mu[0].weight, net.mu[0].weight)
    h = conditioning.condition_features(fam.config, fake_batch(fam.config), fam.perturb)
    assert torch.allclose(h.norm(dim=-1), torch.ones(4), atol=1e-5)


# ------------------------------------------------------------------------------ presets
def test_presets_are_valid_and_shapes32_is_small():
    assert {"shapes32", "coco256", "mmceleba256"} <= set(PRESETS)
    assert preset("shapes32").resolution == 32 and not preset("shapes32").mirror
    with pytest.raises(ValueError, match="shapes32"):
        preset("nope")
    with pytest.raises(ValueError, match="mixing_prob"):
        LafiteConfig(mixing_prob=1.5)


@pytest.mark.skipif(not networks_available(), reason="lafite networks not written yet")
def test_coco256_parameter_count_matches_paper():
    from langfree.families.lafite.family import build_networks, count_parameters

    G, D = build_networks(preset("coco256"))
    g, d = count_parameters(G) / 1e6, count_parameters(D) / 1e6
    assert abs(g - 45.0) < 1.0 and abs(d - 29.1) < 1.0, (g, d)


def test_conv_clamp_reaches_both_networks():
    """The official runs clamp G and D activations at 256; a converted D must clamp too."""
    from langfree.families.lafite.family import build_networks

    cfg = LafiteConfig(resolution=16, c_dim=16, z_dim=8, w_dim=16, channel_base=256, channel_max=16,
                       mapping_layers=2, change_resolution=16, conv_clamp=256)
    G, D = build_networks(cfg)
    d_clamps = {m.conv_clamp for m in D.modules() if hasattr(m, "conv_clamp")}
    g_clamps = {m.conv_clamp for m in G.modules() if hasattr(m, "conv_clamp")}
    assert d_clamps == {256} and g_clamps == {256}


def test_discriminator_can_be_wider_than_the_generator():
    from langfree.families.lafite.family import build_networks, count_parameters

    cfg = LafiteConfig(resolution=16, c_dim=16, z_dim=8, w_dim=16, channel_base=128, channel_max=8,
                       mapping_layers=2, change_resolution=16)
    G, D = build_networks(cfg)
    G2, D2 = build_networks(cfg.replace(d_channel_base=256, d_channel_max=16))
    assert count_parameters(G2) == count_parameters(G)          # G untouched
    assert D2.blocks["b16"].conv0.weight.shape[0] == 16 and D.blocks["b16"].conv0.weight.shape[0] == 8
    logits, feats = D2(torch.zeros(2, 3, 16, 16), F.normalize(torch.randn(2, 16), dim=-1))
    assert logits.shape == (2,) and feats.shape == (2, 16)


def test_g_condition_gain_scales_what_g_sees():
    import numpy as np

    torch.manual_seed(0)
    fam = _family(g_condition_gain=3.0)
    cond = F.normalize(torch.randn(2, 16), dim=-1)
    z = torch.from_numpy(np.stack([np.random.RandomState(s).randn(8) for s in (4, 5)])).float()
    with torch.no_grad():
        want = fam.G_ema.eval()(z, cond * 3.0, noise_mode="const").clamp(-1, 1)
    assert torch.allclose(fam.sample(cond, [4, 5]), want, atol=1e-6)
