"""MaskDiT networks: shapes, masking, adaLN-Zero identity at init, the null condition, and the
parameter counts of the size registry against the official code's."""

import math

import pytest
import torch

from langfree.families.maskdit.config import PRESETS, MaskDiTConfig
from langfree.families.maskdit.networks import (
    MASKDIT_SIZES,
    SHORT_ATTENTION,
    DiTBlock,
    EDMDenoiser,
    MaskDiT,
    attention,
    build_network,
    denoiser_from_config,
    gelu_tanh,
    official_parameter_count,
    random_mask,
    sincos_2d,
    unmask_tokens,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(decoder_depth=1, learn_sigma=False):
    torch.manual_seed(0)
    return MaskDiT(input_size=8, in_channels=4, cond_dim=6, hidden=32, depth=2, heads=2, patch=2,
                   decoder_hidden=16, decoder_depth=decoder_depth, decoder_heads=2,
                   learn_sigma=learn_sigma)


def randomise(net):
    """Give the zero-initialised layers values so outputs depend on every input."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return net


def test_official_parameter_count_xl2():
    # MaskDiT-XL/2 as the official ImageNet-256 config builds it: 4×32×32 latents, 1000
    # classes through a bias-free Linear (one-hot labels), the 512/8/16 decoder with its mask
    # token, no learned sigma; the count includes the fixed position tables (official stores
    # them as frozen parameters). Official train.py prints 730,541,200 for this.
    with torch.device("meta"):
        net = build_network(MASKDIT_SIZES["MaskDiT-XL/2"], input_size=32, in_channels=4,
                            cond_dim=1000)
    assert official_parameter_count(net) == 730_541_200


@pytest.mark.parametrize("name,millions", [("S", 33.0), ("B", 130.5), ("L", 458.1), ("XL", 675.1)])
def test_dit_counts_without_decoder(name, millions):
    # With the decoder off, a learned sigma and 1001 label rows this is DiT (Peebles & Xie
    # Table 4: 33 / 130 / 458 / 675 M); DiT-XL/2's exact count is 675,129,632.
    with torch.device("meta"):
        net = build_network(MASKDIT_SIZES[f"MaskDiT-{name}/2"], input_size=32, in_channels=4,
                            cond_dim=1001, learn_sigma=True, use_decoder=False)
    assert round(official_parameter_count(net) / 1e6, 1) == millions
    if name == "XL":
        assert official_parameter_count(net) == 675_129_632


def test_registry_decoders_are_light():
    assert len(MASKDIT_SIZES) == 8
    for name, s in MASKDIT_SIZES.items():
        assert s.decoder_hidden <= s.hidden // 2, name
        assert s.patch in (2, 4)
    # patch 4 has fewer output and embedding weights, same blocks
    with torch.device("meta"):
        p2 = build_network(MASKDIT_SIZES["MaskDiT-B/2"], input_size=32, in_channels=4, cond_dim=512)
        p4 = build_network(MASKDIT_SIZES["MaskDiT-B/4"], input_size=32, in_channels=4, cond_dim=512)
    diff = official_parameter_count(p4) - official_parameter_count(p2)
    # patch embed 4·(16-4)·768, final linear 12·4·(384+1), position tables shrink 192·(768+384)
    assert diff == 4 * 12 * 768 + 12 * 4 * 385 - 192 * (768 + 384)


def test_config_builds_and_small_preset_size():
    net = denoiser_from_config(PRESETS["shapes32"])
    assert isinstance(net, EDMDenoiser)
    n = sum(p.numel() for p in net.parameters())
    assert 2e6 < n < 8e6
    with pytest.raises(ValueError, match="at most half"):
        MaskDiTConfig(hidden=256, heads=4, decoder_hidden=192, decoder_heads=4)
    with pytest.raises(ValueError, match="divisible by patch"):
        MaskDiTConfig(resolution=24, latent_downsample=4, patch=4)


def test_forward_shapes_and_learned_sigma():
    x, t, y = torch.randn(3, 4, 8, 8), torch.randn(3), torch.randn(3, 6)
    assert tiny()(x, t, y).shape == (3, 4, 8, 8)
    assert tiny(learn_sigma=True)(x, t, y).shape == (3, 8, 8, 8)
    mask = random_mask(3, 16, 0.5)
    assert tiny()(x, t, y, mask).shape == (3, 4, 8, 8)
    assert tiny(decoder_depth=0)(x, t, y, mask).shape == (3, 4, 8, 8)
    with pytest.raises(ValueError, match="does not match"):
        tiny()(torch.randn(3, 4, 6, 6), t, y)


def test_mask_keeps_fixed_count_and_is_a_permutation():
    m = random_mask(5, 16, 0.5)
    assert m.keep.shape == (5, 8)
    assert torch.equal(m.masked.sum(1), torch.full((5,), 8.0))
    for i in range(5):
        assert torch.all(m.masked[i, m.keep[i]] == 0)  # kept tokens are the unmasked ones
    assert int(16 * (1 - 0.7)) == random_mask(2, 16, 0.7).keep.shape[1] == 4


def test_encoder_sees_only_visible_tokens_and_decoder_fills_all():
    net = randomise(tiny())
    seen = {}
    net.blocks[0].register_forward_hook(lambda m, i, o: seen.update(enc=o.shape) and None)
    net.decoder_blocks[0].register_forward_hook(lambda m, i, o: seen.update(dec=o.shape) and None)
    mask = random_mask(2, 16, 0.5)
    net(torch.randn(2, 4, 8, 8), torch.randn(2), torch.randn(2, 6), mask)
    assert seen["enc"] == (2, 8, 32) and seen["dec"] == (2, 16, 16)


def test_unmask_places_tokens_and_fill():
    m = random_mask(2, 6, 0.5)
    vis = torch.arange(2 * 3, dtype=torch.float32).reshape(2, 3, 1) + 1  # ids 1..6
    full = unmask_tokens(vis, m, torch.zeros(1, 1, 1))
    for i in range(2):
        assert torch.equal(full[i, m.keep[i], 0], vis[i, :, 0])
        assert torch.all(full[i, m.masked[i].bool(), 0] == 0)


def test_masked_output_depends_only_on_visible_inputs():
    net = randomise(tiny())
    mask = random_mask(1, 16, 0.5, generator=torch.Generator().manual_seed(3))
    x = torch.randn(1, 4, 8, 8)
    x2 = x.clone()
    j = int(mask.masked[0].nonzero()[0])  # a masked token: its 2×2 patch at raster index j
    r, c = divmod(j, 4)
    x2[0, :, 2 * r:2 * r + 2, 2 * c:2 * c + 2] += 5.0
    t, y = torch.zeros(1), torch.randn(1, 6)
    assert torch.allclose(net(x, t, y, mask), net(x2, t, y, mask), atol=1e-6)
    assert not torch.allclose(net(x, t, y), net(x2, t, y), atol=1e-3)


def test_adaln_zero_block_is_identity_at_init():
    torch.manual_seed(0)
    net = tiny()
    block = net.blocks[0]
    x, c = torch.randn(2, 5, 32), torch.randn(2, 32)
    assert torch.equal(block(x, c), x)
    # the whole network outputs exactly zero at init (final layer zeroed)
    out = net(torch.randn(2, 4, 8, 8), torch.randn(2), torch.randn(2, 6))
    assert torch.equal(out, torch.zeros_like(out))
    assert isinstance(block, DiTBlock)


def test_null_condition_is_zero_conditioning():
    net = randomise(tiny())
    t = torch.randn(3)
    assert torch.equal(net.condition(t, torch.zeros(3, 6)), net.t_embedder(t))
    # the condition is L2-normalised inside: scale does not matter
    y = torch.randn(3, 6)
    assert torch.allclose(net.condition(t, y), net.condition(t, 7.0 * y), atol=1e-6)


def test_sincos_positions_formula():
    pe = sincos_2d(8, 3)  # [9, 8]: first half column, second half row; [sin, cos] each
    omega = [1.0, 1.0 / 100.0]  # 10000^(-k/2), k = 0, 1
    for tok in range(9):
        row, col = divmod(tok, 3)
        want = [math.sin(col * w) for w in omega] + [math.cos(col * w) for w in omega]
        want += [math.sin(row * w) for w in omega] + [math.cos(row * w) for w in omega]
        assert torch.allclose(pe[tok], torch.tensor(want), atol=1e-6)


def test_edm_preconditioning_at_init_is_c_skip():
    den = EDMDenoiser(tiny(), sigma_data=0.5)
    x, s = torch.randn(2, 4, 8, 8), torch.tensor([0.3, 4.0])
    want = 0.25 / (s**2 + 0.25)
    assert torch.allclose(den(x, s, torch.randn(2, 6)), want.reshape(-1, 1, 1, 1) * x, atol=1e-6)


def test_official_state_dict_conversion_renames_and_checks_positions():
    from langfree.families.maskdit.convert import official_to_langfree

    den = EDMDenoiser(tiny(), 0.5)
    ours = den.state_dict()
    official = {("model.y_embedder.embedding_table.weight" if k == "model.cond_embedder.weight"
                 else k): v for k, v in ours.items()}
    official["model.pos_embed"] = den.model.pos_embed.clone()
    official["model.decoder_pos_embed"] = den.model.decoder_pos_embed.clone()
    back = official_to_langfree(official, den)
    assert set(back) == set(ours) and all(torch.equal(back[k], ours[k]) for k in ours)
    official["model.pos_embed"] = official["model.pos_embed"] + 1
    with pytest.raises(ValueError, match="sin-cos"):
        official_to_langfree(official, den)


def test_gelu_tanh_matches_pytorch_with_and_without_autograd():
    x = torch.randn(4, 9, 33) * 4
    ref = torch.nn.functional.gelu(x, approximate="tanh")
    with torch.no_grad():  # the sigmoid identity, in place on one new tensor
        fast = gelu_tanh(x)
    assert torch.allclose(fast, ref, atol=2e-6, rtol=0) and not torch.equal(x, fast)
    xr = x.clone().requires_grad_()
    gelu_tanh(xr).sum().backward()
    xg = x.clone().requires_grad_()
    ref_g = torch.nn.functional.gelu(xg, approximate="tanh")
    ref_g.sum().backward()
    assert torch.allclose(xr.grad, xg.grad)


@pytest.mark.parametrize("tokens", [5, SHORT_ATTENTION, SHORT_ATTENTION + 1])
def test_attention_equals_sdpa_on_both_paths(tokens):
    q, k, v = torch.randn(3, 2, 3, tokens, 8).unbind(0)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(attention(q, k, v), ref, atol=1e-5)
