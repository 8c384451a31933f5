"""Custom Diffusion processors: what they train, the position-0 detach, diffusers equivalence."""

import pytest
import torch

from langfree.families.custom_diffusion.attention import (
    CustomDiffusionAttnProcessor,
    CustomDiffusionLayers,
    cross_attention_names,
    install,
    trainable_parameter_names,
)


@pytest.fixture()
def unet(one_thread):
    from langfree.families.sd.config import PRESETS
    from langfree.families.sd.pipeline import build_unet

    torch.manual_seed(0)
    return build_unet(PRESETS["test"]).eval().requires_grad_(False)


def _inputs():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 700]),
            torch.randn(2, 77, 16, generator=g))


@pytest.mark.parametrize("mode, per_layer", [("crossattn_kv", 2), ("crossattn", 5)])
def test_install_touches_exactly_the_chosen_parameters(unet, mode, per_layer):
    base = {n: p.clone() for n, p in unet.named_parameters()}
    layers_with_cross = cross_attention_names(unet)
    procs = install(unet, mode)
    assert list(procs) == layers_with_cross
    names = trainable_parameter_names(unet, mode)
    # K, V weights (+ Q weight, out weight and bias) per cross-attention layer, nothing else
    assert len(names) == per_layer * len(layers_with_cross)
    assert set(names) == {n for n, _ in unet.named_parameters() if n not in base}
    assert all(".attn2.processor." in n for n in names)
    layers = CustomDiffusionLayers(procs)
    assert sum(p.numel() for p in layers.parameters()) == sum(
        p.numel() for n, p in unet.named_parameters() if n in names)
    # the base parameters are untouched and the processors start as the base projections
    assert all(torch.equal(base[n], p) for n, p in unet.named_parameters() if n in base)


def test_installed_processors_start_equal_to_the_base(unet):
    x, t, c = _inputs()
    before = unet(x, t, c).sample
    install(unet, "crossattn")
    assert torch.allclose(unet(x, t, c).sample, before, atol=1e-6)


def test_no_gradient_through_text_position_zero():
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8)
    proc = CustomDiffusionAttnProcessor.from_attention(attn, train_kv=True, train_q_out=False)
    attn.set_processor(proc)
    h = torch.randn(2, 5, 16)
    text = torch.randn(2, 7, 12, requires_grad=True)
    attn(h, encoder_hidden_states=text).square().sum().backward()
    assert torch.count_nonzero(text.grad[:, 0]) == 0          # blocked at the start token
    assert torch.count_nonzero(text.grad[:, 1:]) > 0
    # the K/V weights learn only from positions >= 1: with text only at position 0 (zeros
    # elsewhere, so positions >= 1 give K/V no gradient) their gradient is exactly zero
    proc.zero_grad()
    only_first = torch.zeros(2, 7, 12)
    only_first[:, 0] = torch.randn(2, 12)
    attn(h, encoder_hidden_states=only_first).square().sum().backward()
    assert torch.count_nonzero(proc.to_k_custom_diffusion.weight.grad) == 0
    assert torch.count_nonzero(proc.to_v_custom_diffusion.weight.grad) == 0
    assert torch.count_nonzero(attn.to_q.weight.grad if attn.to_q.weight.grad is not None
                               else torch.ones(1)) > 0  # the rest of the graph did run


def test_matches_diffusers_custom_diffusion_processor(unet):
    from diffusers.models.attention_processor import (
        CustomDiffusionAttnProcessor as Official,
    )

    x, t, c = _inputs()
    procs = install(unet, "crossattn")
    with torch.no_grad():
        for p in CustomDiffusionLayers(procs).parameters():
            p.add_(0.1 * torch.randn_like(p))
    ours = unet(x, t, c).sample
    official = {}
    for name, proc in unet.attn_processors.items():
        if name in procs:
            official[name] = Official(train_kv=True, train_q_out=True, hidden_size=proc.hidden_size,
                                      cross_attention_dim=proc.cross_attention_dim)
            official[name].load_state_dict(proc.state_dict())
        else:
            official[name] = proc
    unet.set_attn_processor(official)
    assert torch.allclose(unet(x, t, c).sample, ours, atol=1e-5)


def test_unknown_freeze_model_is_refused(unet):
    with pytest.raises(ValueError, match="crossattn_kv, crossattn, none"):
        install(unet, "everything")
