"""Custom Diffusion files: langfree's own loader round-trips exactly; official .bin files read
tensor-only; the diffusers calls that restore the files in the installed diffusers."""

import pytest
import torch

from langfree.families.custom_diffusion.attention import CustomDiffusionLayers, install
from langfree.families.custom_diffusion.tokens import install_modifier_tokens
from langfree.families.custom_diffusion.weights import (
    WEIGHTS_NAME,
    load_custom_diffusion,
    load_into,
    read_tensors,
    read_token_file,
    save_custom_diffusion,
)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, one_thread):
    from langfree.families.sd.tiny import write_tiny_base

    return write_tiny_base(tmp_path_factory.mktemp("cdw") / "base")


def _trained(base_dir, mode="crossattn_kv", tokens=("<new1>",)):
    """A base with processors + token rows moved away from their initial values."""
    from langfree.families.sd.pipeline import load_pipeline_dir

    parts = load_pipeline_dir(base_dir)
    layers = CustomDiffusionLayers(install(parts.unet, mode))
    emb = install_modifier_tokens(parts.tokenizer, parts.text_encoder, list(tokens), ["ktn"])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in list(layers.parameters()) + [emb.rows]:
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return parts, layers, emb


def _unet_out(parts, prompt="a <new1> square"):
    ids = parts.tokenizer([prompt], padding="max_length", max_length=77,
                          return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = parts.text_encoder(ids)[0]
        x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
        return parts.unet(x, torch.tensor([321]), hidden).sample


@pytest.mark.parametrize("mode", ["crossattn_kv", "crossattn"])
def test_round_trip_gives_identical_unet_outputs(base_dir, tmp_path, mode):
    from langfree.families.sd.pipeline import load_pipeline_dir

    parts, layers, emb = _trained(base_dir, mode, ("<new1>", "<new2>"))
    save_custom_diffusion(tmp_path, layers, {"<new1>": emb.rows[0], "<new2>": emb.rows[1]})
    keys = read_tensors(tmp_path / WEIGHTS_NAME)
    assert all(".attn2.processor.to_" in k and "_custom_diffusion." in k for k in keys)
    assert ("down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor."
            "to_k_custom_diffusion.weight") in keys
    fresh = load_pipeline_dir(base_dir)
    load_into(fresh, tmp_path)
    assert torch.equal(_unet_out(fresh, "a <new1> and <new2>"), _unet_out(parts, "a <new1> and <new2>"))


def test_token_row_round_trip(base_dir, tmp_path):
    _, layers, emb = _trained(base_dir)
    save_custom_diffusion(tmp_path, layers, {"<new1>": emb.rows[0]})
    token, row = read_token_file(tmp_path / "<new1>.safetensors")
    assert token == "<new1>" and torch.equal(row, emb.rows[0].detach())


def test_reads_official_bin_files_tensor_only(base_dir, tmp_path):
    """The official .bin layout: empty dicts for self-attention processors beside the tensors
    (written here with torch.save only to emulate an official file)."""
    parts, layers, emb = _trained(base_dir)
    state = {k: v.clone() for k, v in layers.diffusers_state_dict().items()}
    for name in parts.unet.attn_processors:
        if name not in layers.names:
            state[name] = {}
    torch.save(state, tmp_path / "pytorch_custom_diffusion_weights.bin")
    torch.save({"<new1>": emb.rows[0].detach().clone()}, tmp_path / "<new1>.bin")
    from langfree.families.sd.pipeline import load_pipeline_dir

    fresh = load_pipeline_dir(base_dir)
    load_into(fresh, tmp_path)
    assert torch.equal(_unet_out(fresh), _unet_out(parts))


def test_weights_from_another_base_are_refused(base_dir, tmp_path):
    from langfree.families.sd.pipeline import load_pipeline_dir

    _, layers, _ = _trained(base_dir)
    state = layers.diffusers_state_dict()
    bad = {k.replace("down_blocks.0", "down_blocks.7"): v for k, v in state.items()}
    from langfree.families.custom_diffusion.weights import write_tensors

    write_tensors(tmp_path / WEIGHTS_NAME, bad)
    with pytest.raises(ValueError, match="not an attention layer of this UNet"):
        load_custom_diffusion(load_pipeline_dir(base_dir).unet, tmp_path)


def test_the_diffusers_calls_that_restore_our_files(base_dir, tmp_path):
    """diffusers 0.42.1: load_attn_procs needs a dict holding every attention layer (empty
    entries for self-attention) and the private _pipeline=, else it installs nothing or fails;
    load_textual_inversion reads <new1>.safetensors as written."""
    from diffusers import StableDiffusionPipeline

    parts, layers, emb = _trained(base_dir)
    save_custom_diffusion(tmp_path, layers, {"<new1>": emb.rows[0]})
    pipe = StableDiffusionPipeline.from_pretrained(base_dir, local_files_only=True)
    state = read_tensors(tmp_path / WEIGHTS_NAME)
    with pytest.raises(ValueError, match="number of processors"):
        pipe.unet.load_attn_procs(str(tmp_path), weight_name=WEIGHTS_NAME, _pipeline=pipe)
    full = dict(state)
    for name in pipe.unet.attn_processors:
        if not any(k.startswith(name + ".") for k in state):
            full[name] = {}
    pipe.unet.load_attn_procs(full, _pipeline=pipe)
    pipe.load_textual_inversion(str(tmp_path), weight_name="<new1>.safetensors")
    # diffusers' processor uses bmm attention, ours SDPA: equal up to float rounding
    assert torch.allclose(_unet_out(pipe), _unet_out(parts), atol=1e-5)
