"""The condition h that G and D see during training (LAFITE §3.2, official loss.py ~173-202).

Language-free training has only image features î. At inference G receives text features t̂,
which in CLIP space sit in a different region than image features (the modality gap). LAFITE
closes the gap by training on *pseudo text features*: perturbed image features that cover the
neighbourhood where matching text features lie.

  gaussian (LAFITE-G):  h̃ = normalize(a·î + b·ε̂), ε̂ a random unit direction per sample.
                        official a = 0.25, b = 0.75 → cos(h̃, î) ≈ a / sqrt(a² + b²) ≈ 0.32.
  learned  (LAFITE-NN): h̃ = normalize(î + μ(î) + exp(s(î))·N(0, I)), see perturb.py.
  none:                 h̃ = î (the ablation: no perturbation).
Real captions (standard setting) are lightly noised: t̃ = normalize(0.9·t̂ + 0.1·ε̂), the same
ε̂ as the sample's pseudo feature (as the official code does). ``mixing_prob`` picks h̃ or t̃
per sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from langfree.encoders.pseudo_text import (  # noqa: F401  (shared with dalle, quickstart)
    gaussian_pseudo_text,
    noise_for_cosine,
    random_directions,
)
from langfree.families.lafite.config import LafiteConfig


def condition_features(config: LafiteConfig, batch: dict, perturb: nn.Module | None = None,
                       ) -> torch.Tensor:
    """The training condition h [B, D] (unit) for one batch; randomness from the global RNG.

    batch: ``image_emb`` [B, D], ``text_emb`` [B, D], ``has_caption`` [B] (see families/base.py).
    A sample drawn for its caption that has none (a partly captioned archive) gets its pseudo
    feature, as under mixing_prob 1.
    """
    image_emb = batch["image_emb"].float()                              # [B, D]
    B, D = image_emb.shape
    eps = random_directions((B, D), image_emb.device)                   # [B, D]
    pseudo = pseudo_text(config, image_emb, eps, perturb)               # [B, D]
    if config.mixing_prob >= 1.0:
        return pseudo                        # language-free: captions are never read
    use_pseudo = torch.rand(B, device=image_emb.device) < config.mixing_prob   # [B]
    has_caption = batch["has_caption"].to(image_emb.device).bool()
    use_pseudo = use_pseudo | ~has_caption   # an image without a caption: its pseudo feature
    text = F.normalize(config.text_weight * F.normalize(batch["text_emb"].float(), dim=-1)
                       + config.text_noise * eps, dim=-1)               # [B, D]
    return torch.where(use_pseudo[:, None], pseudo, text)


def pseudo_text(config: LafiteConfig, image_emb: torch.Tensor, eps: torch.Tensor,
                perturb: nn.Module | None = None) -> torch.Tensor:
    """Pseudo text features from image features by ``config.conditioning``. [B, D] -> [B, D]."""
    if config.conditioning == "gaussian":
        return gaussian_pseudo_text(image_emb, eps, config.image_weight, config.image_noise)
    if config.conditioning == "learned":
        if perturb is None:
            raise ValueError("conditioning='learned' needs a trained perturbation network: "
                             "train one with `langfree train lafite-perturb` and pass its path")
        with torch.no_grad():
            return perturb(F.normalize(image_emb, dim=-1))
    return F.normalize(image_emb, dim=-1)   # "none"
