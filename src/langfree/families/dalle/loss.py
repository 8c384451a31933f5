"""DALL·E objective: (CE_text + 7·CE_image) / 8 (paper §2.2: "1/8 text, 7/8 image"), with the
training-time text corruptions: BPE dropout (10 %) and caption dropout to the null text (so the
same network also models p(image), which classifier-free guidance needs)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from langfree.families.dalle.bpe import CaptionTokenizer
from langfree.families.dalle.config import DalleConfig
from langfree.families.dalle.transformer import DalleTransformer


def training_text(tokenizer: CaptionTokenizer, captions: list[str], cfg: DalleConfig,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Captions -> [B, L] ids with BPE dropout, and each row replaced by the null text with
    probability ``null_cond_prob``. All randomness comes from the global torch RNG (one seed
    for the BPE dropout + B uniforms), which the loop saves, so a resumed run is exact."""
    seed = int(torch.randint(0, 2**62, ()))
    drop = torch.rand(len(captions)) < cfg.null_cond_prob  # (B,)
    captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
    return tokenizer.encode(captions, cfg.text_len, dropout=cfg.bpe_dropout, seed=seed).to(device)


def dalle_loss(net: DalleTransformer, text: torch.Tensor, codes: torch.Tensor,
               image_loss_weight: float = 7.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """text [B, L] ids, codes [B, N] -> (weighted loss, {ce_text, ce_image})."""
    text_logits, image_logits = net(text, codes)  # (B, L, V+L), (B, N, K)
    ce_text = F.cross_entropy(text_logits.flatten(0, 1), text.flatten())
    ce_image = F.cross_entropy(image_logits.flatten(0, 1), codes.flatten())
    loss = (ce_text + image_loss_weight * ce_image) / (1.0 + image_loss_weight)
    return loss, {"ce_text": ce_text.detach(), "ce_image": ce_image.detach()}
