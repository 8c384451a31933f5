"""DALL·E objective: (CE_text + 7·CE_image) / 8 (paper §2.2: "1/8 text, 7/8 image"), with the
training-time text corruptions: BPE dropout (10 %) and caption dropout to the null text (so the
same network also models p(image), which classifier-free guidance needs).

Language-free (``condition="clip"``): the prefix is the image's own CLIP embedding perturbed as
LAFITE-G (``clip_condition``), dropped to the zero embedding for guidance; the loss is CE_image
alone (there is no text to model)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from langfree.encoders.pseudo_text import gaussian_pseudo_text, random_directions
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


def clip_condition(image_emb: torch.Tensor, cfg: DalleConfig) -> torch.Tensor:
    """image_emb î [B, D] -> the training prefix condition [B, D]: LAFITE-G's pseudo text
    feature h̃ = normalize(î + ξ·ε̂) (ξ = ``clip_noise``; the same function LAFITE trains with),
    replaced by the zero (null) embedding with probability ``null_cond_prob``. Randomness from
    the global torch RNG (the loop saves it: exact resume)."""
    image_emb = image_emb.float()
    eps = random_directions(image_emb.shape, image_emb.device)  # (B, D) unit
    h = gaussian_pseudo_text(image_emb, eps, 1.0, cfg.clip_noise)  # (B, D) unit
    drop = torch.rand(len(h), device=h.device) < cfg.null_cond_prob  # (B,)
    return torch.where(drop[:, None], torch.zeros_like(h), h)


def dalle_loss(net: DalleTransformer, text: torch.Tensor, codes: torch.Tensor,
               image_loss_weight: float = 7.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """text [B, L] ids (clip mode: embeddings [B, D]), codes [B, N] -> (weighted loss,
    {ce_text, ce_image}); clip mode: (CE_image, {ce_image})."""
    text_logits, image_logits = net(text, codes)  # (B, L, V+L) or None, (B, N, K)
    if text_logits is None:
        ce_image = F.cross_entropy(image_logits.flatten(0, 1), codes.flatten())
        return ce_image, {"ce_image": ce_image.detach()}
    ce_text = F.cross_entropy(text_logits.flatten(0, 1), text.flatten())
    ce_image = F.cross_entropy(image_logits.flatten(0, 1), codes.flatten())
    loss = (ce_text + image_loss_weight * ce_image) / (1.0 + image_loss_weight)
    return loss, {"ce_text": ce_text.detach(), "ce_image": ce_image.detach()}
