"""Pseudo text features: perturbed image embeddings that stand in for text embeddings when a
family trains language-free (LAFITE-G, Zhou et al. 2022 §3.2; the DALL·E clip prefix uses the
same rule). Operations on the joint space only, so every family can use them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_directions(shape: torch.Size | tuple[int, ...], device: torch.device,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Unit vectors uniform on the sphere, [B, D]."""
    eps = torch.randn(shape, device=device, generator=generator)
    return F.normalize(eps, dim=-1)


def noise_for_cosine(paired_cosine: float, image_weight: float) -> float:
    """LAFITE-G noise weight that puts h̃ at ``paired_cosine`` from î, the cosine a real caption
    has with its image under the same encoder: cos(h̃, î) = a / sqrt(a² + b²) for ε̂ ⟂ î, so
    b = a·sqrt(1/cos² - 1). The official 0.25/0.75 is this rule for pretrained CLIP (cos ≈ 0.32);
    a small CLIP trained on few captions has a much smaller modality gap (cos ≈ 0.95)."""
    if not 0.0 < paired_cosine <= 1.0:
        raise ValueError(f"paired text-image cosine must be in (0, 1], got {paired_cosine}")
    return image_weight * math.sqrt(1.0 / paired_cosine ** 2 - 1.0)


def gaussian_pseudo_text(image_emb: torch.Tensor, eps: torch.Tensor, image_weight: float,
                         noise_weight: float) -> torch.Tensor:
    """LAFITE-G: normalize(image_weight·î + noise_weight·ε̂). [B, D] -> [B, D] unit.
    ξ (the noise relative to the unit image feature) is noise_weight / image_weight."""
    return F.normalize(image_weight * F.normalize(image_emb, dim=-1) + noise_weight * eps, dim=-1)
