"""MaskDiT's training objective: EDM denoising on the visible patches + 0.1 × MAE on the masked.

EDM (Karras et al. 2022, §5 and Table 1; NVlabs/edm ``training/loss.py``): ln σ ~ N(P_mean,
P_std²) with P_mean = -1.2, P_std = 1.2; λ(σ) = (σ² + σ_d²)/(σ·σ_d)², σ_d = 0.5; the loss is
λ(σ)·‖D(y + n; σ) - y‖², n ~ N(0, σ²I). MaskDiT (Zheng et al. 2023, Eq. 3; Anima-Lab/MaskDiT
``train_utils/loss.py``) averages it over the visible patches only and adds an MAE term on the
masked patches: D's output regresses the noisy input y + n, normalised per patch (MAE's
``norm_pix_loss``), unweighted by λ.

The condition (the language-free thesis): the image's CLIP embedding, noise-augmented per sample
c' = normalize(normalize(c) + p·u), p ~ N(0, σ_aug²), u a random unit vector ("gaus1.2":
σ_aug = 1.2, cos(c, c') ≈ 0.72 at 512 d); 10 % of conditions zeroed (the null condition).

All randomness comes from the global torch RNG (the loop saves and restores it on resume).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange

from langfree.families.maskdit.networks import EDMDenoiser, TokenMask, keep_count, random_mask

MASK_SCHEDULES = ("constant", "cosine")


def edm_weight(sigma: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
    """λ(σ) = (σ² + σ_d²) / (σ·σ_d)²: makes the effective target of F unit-variance (EDM Eq. 8)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def sample_sigma(n: int, p_mean: float = -1.2, p_std: float = 1.2, device=None) -> torch.Tensor:
    """[n] noise levels, ln σ ~ N(p_mean, p_std²)."""
    return (torch.randn(n, device=device) * p_std + p_mean).exp()


def mask_ratio_at(fraction: float, ratio: float, schedule: str = "constant",
                  ratio_min: float = 0.0, power: int = 4) -> float:
    """The mask ratio at training ``fraction`` ∈ [0, 1].

    constant: ``ratio``; cosine: (ratio - ratio_min)·cos(π·fraction/2)^power + ratio_min
    (the official ``cosine2``..``cosine6``; its fine-tune config asks for ``cos4``)."""
    if schedule == "constant":
        return ratio
    if schedule == "cosine":
        f = min(max(fraction, 0.0), 1.0)
        return (ratio - ratio_min) * math.cos(math.pi * f / 2) ** power + ratio_min
    raise ValueError(f"mask schedule {schedule!r}: choose one of {', '.join(MASK_SCHEDULES)}")


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """[N, C, H, W] -> [N, T, p²·C] in the network's token and channel order."""
    return rearrange(x, "n c (h p) (w q) -> n (h w) (p q c)", p=patch, q=patch)


def mae_loss(noisy: torch.Tensor, denoised: torch.Tensor, masked: torch.Tensor,
             patch: int) -> torch.Tensor:
    """Per-sample [N] MAE loss on the masked patches: D's output against the noisy input, the
    target normalised per patch to zero mean and unit variance (unbiased var + 1e-6, as MAE)."""
    target = patchify(noisy, patch)  # (N, T, p²C)
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    target = (target - mean) / (var + 1e-6).sqrt()  # (N, T, p²C)
    per_patch = (patchify(denoised, patch) - target).square().mean(dim=-1)  # (N, T)
    return (per_patch * masked).sum(1) / masked.sum(1).clamp_min(1)  # (N,); 0 if none masked


def denoising_loss(denoised: torch.Tensor, clean: torch.Tensor, sigma: torch.Tensor,
                   sigma_data: float, patch: int, mask: TokenMask | None) -> torch.Tensor:
    """Per-sample [N] λ(σ)-weighted squared error, over the visible patches when masked."""
    err = edm_weight(sigma, sigma_data).reshape(-1, 1, 1, 1) * (denoised - clean).square()
    if mask is None:
        return err.flatten(1).mean(1)  # (N,)
    per_patch = F.avg_pool2d(err.mean(dim=1), patch).flatten(1)  # (N, T), raster order
    visible = mask.visible
    return (per_patch * visible).sum(1) / visible.sum(1)  # (N,)


def augment_condition(c: torch.Tensor, sigma_aug: float) -> torch.Tensor:
    """c' = normalize(normalize(c) + p·u), p ~ N(0, 1)·σ_aug per row, u uniform on the sphere.

    c: [N, D] -> [N, D] unit rows. σ_aug 0 returns normalize(c). (Thesis "gaus<σ>".)"""
    c = F.normalize(c, dim=1)
    if sigma_aug == 0:
        return c
    u = F.normalize(torch.randn_like(c), dim=1)  # (N, D) random directions
    p = torch.randn(c.shape[0], 1, device=c.device, dtype=c.dtype) * sigma_aug  # (N, 1)
    return F.normalize(c + p * u, dim=1)


def drop_condition(c: torch.Tensor, prob: float) -> torch.Tensor:
    """Zero each row of c with probability ``prob`` (the null condition of guidance)."""
    if prob == 0:
        return c
    keep = (torch.rand(c.shape[0], 1, device=c.device) >= prob).to(c.dtype)  # (N, 1)
    return c * keep


def mix_conditions(image_emb: torch.Tensor, text_emb: torch.Tensor | None,
                   has_caption: torch.Tensor | None, mixing_prob: float) -> torch.Tensor:
    """LAFITE's ``mixing_prob``: per sample, the (augmented) image embedding with probability
    ``mixing_prob`` and the caption embedding otherwise (rows without a caption keep the image
    embedding). 1 = language-free, 0 = standard (captions only)."""
    if mixing_prob >= 1 or text_emb is None:
        return image_emb
    use_text = torch.rand(image_emb.shape[0], 1, device=image_emb.device) >= mixing_prob
    if has_caption is not None:
        use_text = use_text & has_caption.reshape(-1, 1).bool()
    return torch.where(use_text, F.normalize(text_emb, dim=1), image_emb)  # (N, D)


def maskdit_loss(denoiser: EDMDenoiser, latents: torch.Tensor, cond: torch.Tensor, *,
                 mask_ratio: float, mae_weight: float = 0.1, p_mean: float = -1.2,
                 p_std: float = 1.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One batch of the MaskDiT objective.

    latents: [N, C, h, w] clean latents (scaled to std ≈ σ_data); cond: [N, D] conditions as the
    network should see them (already augmented and dropped). Returns the mean loss (scalar) and
    per-term stats (0-d tensors, detached)."""
    net = denoiser.model
    n = latents.shape[0]
    sigma = sample_sigma(n, p_mean, p_std, device=latents.device)  # (N,)
    noisy = latents + torch.randn_like(latents) * sigma.reshape(-1, 1, 1, 1)  # (N, C, h, w)
    # a ratio too small to mask one token (a cosine schedule's tail) trains unmasked
    masking = keep_count(net.tokens, mask_ratio) < net.tokens
    mask = random_mask(n, net.tokens, mask_ratio, device=latents.device) if masking else None
    denoised = denoiser(noisy, sigma, cond, mask)  # (N, C, h, w)
    dsm = denoising_loss(denoised, latents, sigma, denoiser.sigma_data, net.patch, mask)  # (N,)
    loss = dsm
    stats = {"loss_dsm": dsm.mean().detach()}
    if mask is not None and mae_weight > 0:
        mae = mae_loss(noisy, denoised, mask.masked, net.patch)  # (N,)
        loss = loss + mae_weight * mae
        stats["loss_mae"] = mae.mean().detach()
    total = loss.mean()
    if mask is None and net.decoder_depth > 0:
        # the mask token gets no gradient without masking; a zero term keeps it in the graph so
        # distributed gradient all-reduce sees every parameter (the official code does the same)
        total = total + 0 * net.mask_token.sum()
    return total, stats
