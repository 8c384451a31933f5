"""Equivalence with the official taming-transformers modules (CompVis/taming-transformers).

Set ``LANGFREE_TAMING_SRC`` to a checkout (outside this repo). Only
``taming/modules/diffusionmodules/model.py`` and ``taming/modules/vqvae/quantize.py`` are loaded
(by file path: they import torch/numpy/einops only, so neither Lightning nor OmegaConf is needed).
The official Encoder/Decoder/VectorQuantizer2 are built at a small config with random weights,
their state_dict is copied into langfree's VQGAN by name, and codes and reconstructions must
agree (max abs diff <= 1e-4).
"""

import importlib.util
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from langfree.families.vqgan.config import PRESETS
from langfree.families.vqgan.networks import VQGAN

SRC = os.environ.get("LANGFREE_TAMING_SRC")
pytestmark = pytest.mark.skipif(
    not SRC, reason="set LANGFREE_TAMING_SRC to a CompVis/taming-transformers checkout")


def _load(rel: str):
    path = Path(SRC) / rel
    if not path.is_file():
        pytest.fail(f"LANGFREE_TAMING_SRC={SRC} has no {rel}")
    spec = importlib.util.spec_from_file_location(f"_taming_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _OfficialVQ(nn.Module):
    """The VQModel pieces without Lightning (same attribute names as taming's VQModel)."""

    def __init__(self, cfg):
        super().__init__()
        model = _load("taming/modules/diffusionmodules/model.py")
        quant = _load("taming/modules/vqvae/quantize.py")
        dd = {"double_z": False, "z_channels": cfg.z_channels, "resolution": cfg.resolution,
              "in_channels": 3, "out_ch": 3, "ch": cfg.ch, "ch_mult": list(cfg.ch_mult),
              "num_res_blocks": cfg.num_res_blocks,
              "attn_resolutions": list(cfg.attn_resolutions), "dropout": 0.0}
        self.encoder, self.decoder = model.Encoder(**dd), model.Decoder(**dd)
        self.quantize = quant.VectorQuantizer2(cfg.n_embed, cfg.embed_dim, beta=0.25,
                                                legacy=cfg.legacy_beta)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)


@pytest.mark.parametrize("legacy", [True, False])
def test_official_taming_same_codes_and_reconstructions(legacy):
    torch.manual_seed(0)
    cfg = replace(PRESETS["tiny"], resolution=32, ch_mult=(1, 2, 2), num_res_blocks=2,
                  attn_resolutions=(16,), n_embed=32, legacy_beta=legacy)
    ref = _OfficialVQ(cfg).eval()
    # spread the codebook so codes are not all the same (the official init is U(±1/n))
    ref.quantize.embedding.weight.data.normal_()
    ours = VQGAN(cfg).eval()
    assert set(ours.state_dict()) == set(ref.state_dict())
    ours.load_state_dict(ref.state_dict(), strict=True)

    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        h = ref.quant_conv(ref.encoder(x))
        zq_ref, loss_ref, (_, _, idx_ref) = ref.quantize(h)
        rec_ref = ref.decoder(ref.post_quant_conv(zq_ref))
        rec, loss, codes, z_e = ours(x)
    assert (z_e - h).abs().max() <= 1e-4
    assert torch.equal(codes.flatten(), idx_ref.flatten())
    assert len(codes.unique()) > 1
    assert (rec - rec_ref).abs().max().item() <= 1e-4
    assert torch.allclose(loss, loss_ref, atol=1e-6)  # both β placements
    # decode from codes alone equals the official decode_code path
    with torch.no_grad():
        zq_codes = ref.quantize.get_codebook_entry(idx_ref.flatten(), (3, 8, 8, cfg.embed_dim))
        rec_codes_ref = ref.decoder(ref.post_quant_conv(zq_codes))
        assert (ours.decode_codes(codes) - rec_codes_ref).abs().max().item() <= 1e-4
    print("max abs diff reconstruction:", (rec - rec_ref).abs().max().item())
