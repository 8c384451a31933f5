"""LAFITE generator / discriminator at a tiny config (32 px, channel_max 64)."""

import pytest
import torch
import torch.nn.functional as F

from langfree.families.lafite import ops
from langfree.families.lafite.networks import Discriminator, Generator

C_DIM = 16
TINY = {"z_dim": 32, "c_dim": C_DIM, "w_dim": 32, "img_resolution": 32, "channel_base": 512, "channel_max": 64,
            "mapping_layers": 2}


def make_g(**kw) -> Generator:
    torch.manual_seed(0)
    G = Generator(**{**TINY, **kw})
    with torch.no_grad():  # non-zero noise strengths and w_avg, so the tests can see them
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.3)
        G.mapping.w_avg.normal_()
    return G


def make_d(**kw) -> Discriminator:
    torch.manual_seed(1)
    return Discriminator(c_dim=C_DIM, img_resolution=32, channel_base=512, channel_max=64, **kw)


def inputs(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 32, generator=g), F.normalize(torch.randn(b, C_DIM, generator=g), dim=1)


def test_generator_shapes_and_num_ws():
    G = make_g().eval()
    z, c = inputs()
    assert G.num_ws == 8  # conv1@4, 2 convs at 8/16/32, + the last toRGB
    assert G.mapping(z).shape == (4, 8, 32)
    img = G(z, c)
    assert img.shape == (4, 3, 32, 32) and img.dtype == torch.float32
    assert torch.isfinite(img).all()


def test_const_noise_is_deterministic_and_random_noise_is_not():
    G = make_g().eval()
    z, c = inputs()
    assert torch.equal(G(z, c, noise_mode="const"), G(z, c, noise_mode="const"))
    assert not torch.allclose(G(z, c, noise_mode="random"), G(z, c, noise_mode="random"))
    assert not torch.allclose(G(z, c, noise_mode="const"), G(z, c, noise_mode="none"))


def test_conditioning_changes_the_image_in_both_style_forms():
    for change in (32, 8):  # all "concat" styles; "scale_bias" above 8 px
        G = make_g(change_resolution=change).eval()
        z, c = inputs()
        _, c2 = inputs(seed=1)
        a, b = G(z, c, noise_mode="const"), G(z, c2, noise_mode="const")
        assert (a - b).abs().mean() > 1e-3, change


def test_style_forms_have_the_expected_modules():
    G = make_g(change_resolution=8)
    assert hasattr(G.synthesis.blocks["b8"].conv1.style, "text_mlp")
    assert hasattr(G.synthesis.blocks["b16"].conv1.style, "scale_mlp")


def test_truncation_pulls_towards_w_avg():
    G = make_g().eval()
    z, c = inputs()
    z2, _ = inputs(seed=5)
    # psi = 0: every w is w_avg, so the image no longer depends on z
    assert torch.allclose(G(z, c, 0.0, "const"), G(z2, c, 0.0, "const"), atol=1e-5)
    assert not torch.allclose(G(z, c, 1.0, "const"), G(z2, c, 1.0, "const"))
    ws, ws_half = G.mapping(z), G.mapping(z, 0.5)
    assert torch.allclose(ws_half, G.mapping.w_avg + 0.5 * (ws - G.mapping.w_avg), atol=1e-6)


def test_w_avg_tracks_only_in_training():
    G = make_g()
    z, _ = inputs()
    before = G.mapping.w_avg.clone()
    G.eval().mapping(z)
    assert torch.equal(G.mapping.w_avg, before)
    G.train().mapping(z)
    assert not torch.equal(G.mapping.w_avg, before)


def test_style_mixing_uses_a_second_latent():
    G = make_g().eval()
    z, c = inputs()
    torch.manual_seed(3)
    mixed = G(z, c, noise_mode="const", style_mix_prob=1.0)
    assert not torch.allclose(mixed, G(z, c, noise_mode="const"))


def test_discriminator_shapes_and_projection_forms():
    D = make_d()
    img = torch.randn(4, 3, 32, 32)
    _, c = inputs()
    logits, f = D(img, c)
    assert logits.shape == (4,) and f.shape == (4, C_DIM)
    D.projection = "batch_sum"
    logits_sum, f2 = D(img, c)
    proj = (f * c).sum(1)
    # same realness head, different projection term
    assert torch.allclose(logits_sum - proj.sum(), logits - proj, atol=1e-5)
    assert torch.equal(f, f2)


def test_per_sample_projection_only_touches_its_own_logit():
    img = torch.randn(4, 3, 32, 32)
    _, c = inputs()
    c2 = c.clone()
    c2[0] = -c2[0]
    D = make_d()
    delta = (D(img, c)[0] - D(img, c2)[0]).abs()
    assert delta[0] > 0 and torch.all(delta[1:] == 0)
    D = make_d(projection="batch_sum")
    delta = (D(img, c)[0] - D(img, c2)[0]).abs()
    assert torch.all(delta > 0)  # the official form couples the batch


def test_gradients_reach_every_parameter_and_r1_works():
    G, D = make_g().train(), make_d()
    z, c = inputs()
    logits, f = D(G(z, c), c)
    (F.softplus(-logits).mean() + f.square().mean()).backward()
    for name, p in list(G.named_parameters()) + list(D.named_parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert all(p.grad.abs().sum() > 0 for n, p in G.named_parameters() if "noise" not in n)
    D.zero_grad()
    x = torch.randn(4, 3, 32, 32, requires_grad=True)
    (g,) = torch.autograd.grad(D(x, c)[0].sum(), x, create_graph=True)
    g.square().sum().backward()
    assert D.blocks["b32"].conv0.weight.grad.abs().sum() > 0


def test_bad_inputs_raise_clear_errors():
    G, D = make_g(), make_d()
    z, c = inputs()
    with pytest.raises(ValueError, match="c must be"):
        G(z, c[:, :8])
    with pytest.raises(ValueError, match="z must be"):
        G(z[:, :4], c)
    with pytest.raises(ValueError, match="noise_mode"):
        G(z, c, noise_mode="fixed")
    with pytest.raises(ValueError, match="img must be"):
        D(torch.randn(4, 3, 16, 16), c)
    with pytest.raises(ValueError, match="multiple of the minibatch-stddev"):
        D(torch.randn(6, 3, 32, 32), torch.randn(6, C_DIM))
    with pytest.raises(ValueError, match="projection"):
        make_d(projection="mean")
    with pytest.raises(ValueError, match="power of two"):
        Generator(**{**TINY, "img_resolution": 48})


def _fir_reference(x, up, down, pad0, pad1, gain):
    """Direct definition: zero-insert by `up`, pad, correlate with outer([1,3,3,1])/64*gain, keep every `down`."""
    b, ch, h, w = x.shape
    if up > 1:
        z = torch.zeros(b, ch, h * up, w * up, dtype=x.dtype)
        z[:, :, ::up, ::up] = x
        x = z
    x = F.pad(x, (pad0, pad1, pad0, pad1))
    k = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])).to(x.dtype)
    k = (k / k.sum() * gain).expand(ch, 1, 4, 4)
    return F.conv2d(x, k, groups=ch)[:, :, ::down, ::down]


def test_resampling_ops_match_their_definition_and_are_twice_differentiable():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    assert torch.allclose(ops.upsample2x(x), _fir_reference(x, 2, 1, 2, 1, 4.0))
    assert torch.allclose(ops.downsample2x(x), _fir_reference(x, 1, 2, 1, 1, 1.0))
    assert torch.allclose(ops.blur(x, 2), _fir_reference(x, 1, 1, 2, 2, 1.0))
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)  # small: gradcheck is O(n^2)
    for fn in (ops.upsample2x, ops.downsample2x, lambda t: ops.blur(t, 1, 4.0)):
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


def test_modulated_conv_equals_per_sample_weights():
    """Modulating activations + demodulating outputs == convolving with per-sample weights."""
    G = make_g()
    layer = G.synthesis.blocks["b8"].conv1
    x = torch.randn(2, 64, 8, 8).contiguous(memory_format=torch.channels_last)
    s = torch.randn(2, 64)
    d = ops.demodulation(layer.weight, s)
    wk = layer.weight.unsqueeze(0) * s[:, None, :, None, None]  # [B, O, I, 3, 3]
    wk = wk * (wk.square().sum(dim=(2, 3, 4), keepdim=True) + 1e-8).rsqrt()
    ref = torch.stack([F.conv2d(x[i:i + 1], wk[i], padding=1)[0] for i in range(2)])
    ours = F.conv2d(x * s[:, :, None, None], layer.weight, padding=1) * d[:, :, None, None]
    assert torch.allclose(ours, ref, atol=1e-4)
