"""Equivalence with the official Anima-Lab/MaskDiT network at a small config: the same
denoiser output for the same input, σ, condition and mask (max abs diff <= 1e-4).

Needs a checkout of the official code (``models/maskdit.py``; it imports timm) named by
LANGFREE_MASKDIT_SRC; skipped otherwise."""

import os
import sys

import pytest
import torch
import torch.nn.functional as F

from langfree.families.maskdit.convert import official_to_langfree
from langfree.families.maskdit.networks import EDMDenoiser, MaskDiT, random_mask

SRC = os.environ.get("LANGFREE_MASKDIT_SRC")
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not SRC, reason="set LANGFREE_MASKDIT_SRC to a checkout of "
                                                 "Anima-Lab/MaskDiT to compare with the official code")]


def official_module():
    pytest.importorskip("timm")
    sys.path.insert(0, SRC)
    try:
        from models import maskdit  # the official file
    finally:
        sys.path.remove(SRC)
    return maskdit


@pytest.mark.parametrize("use_decoder", [True, False])
def test_official_denoiser_equivalence(use_decoder):
    maskdit = official_module()
    torch.manual_seed(0)
    # a small model through the official registry's constructor (DiT-S/2 shape, depth cut)
    ref = maskdit.EDMPrecond(img_resolution=8, img_channels=4, num_classes=16,
                             model_type="DiT-S/2", use_decoder=use_decoder, mae_loss_coef=0.1)
    with torch.no_grad():  # random values everywhere (the zero init would hide differences)
        for p in ref.parameters():
            if p.requires_grad:
                p.copy_(torch.randn_like(p) * 0.05)
    ours = EDMDenoiser(MaskDiT(input_size=8, in_channels=4, cond_dim=16, hidden=384, depth=12,
                               heads=6, patch=2, decoder_hidden=512 if use_decoder else 0,
                               decoder_depth=8 if use_decoder else 0, decoder_heads=16), 0.5)
    ours.load_state_dict(official_to_langfree(ref.state_dict(), ours))
    ref.train()  # official drops masked tokens only in training mode
    x = torch.randn(3, 4, 8, 8)
    sigma = torch.tensor([0.05, 1.0, 30.0])
    y = F.normalize(torch.randn(3, 16), dim=1)  # ours L2-normalises inside; give unit rows
    mask = random_mask(3, 16, 0.5, generator=torch.Generator().manual_seed(1))
    mask_dict = {"ids_keep": mask.keep, "ids_restore": mask.restore, "mask": mask.masked}
    with torch.no_grad():
        want = ref(x, sigma, y, mask_ratio=0.5, mask_dict=mask_dict)["x"]
        got = ours(x, sigma, y, mask)
        want_full = ref(x, sigma, y)["x"]
        got_full = ours(x, sigma, y)
    assert (got - want).abs().max() <= 1e-4
    assert (got_full - want_full).abs().max() <= 1e-4
