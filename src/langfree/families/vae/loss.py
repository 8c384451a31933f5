"""The autoencoder objective: reconstruction + KL weight (+ an optional hinge PatchGAN term from
``disc_start`` steps on), and the quality measures the run reports (PSNR, latent statistics).

Units: reconstruction is the mean absolute (or, with ``rec_loss`` l2, squared) error per pixel
value (images in [-1, 1]); the KL is summed
over latent elements and divided by the number of pixel values 3·H·W, so ``kl_weight`` means
what LDM's does (its loss sums both over elements; kl-f8 uses 1e-6).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from langfree.families.base import reconstruction_error
from langfree.families.vae.networks import DiagonalGaussian


def reconstruction_loss(x: torch.Tensor, recon: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    return reconstruction_error(x, recon, kind)


def kl_loss(post: DiagonalGaussian, image_values: int) -> torch.Tensor:
    return post.kl().mean() / image_values  # per pixel value


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean())


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


def psnr(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of images in [-1, 1] (peak-to-peak 2), per batch."""
    mse = (x - recon.clamp(-1, 1)).square().mean()
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))


def latent_stats(mean: torch.Tensor) -> dict[str, float]:
    """Statistics of posterior means [N, C, h, w] and the scale that brings them to unit std
    (what LDM's 0.18215 is for kl-f8): multiply latents by ``scale``."""
    std = mean.std().item()
    return {"latent_mean": mean.mean().item(), "latent_std": std,
            "scale": 1.0 / std if std > 0 and math.isfinite(std) else 1.0}
