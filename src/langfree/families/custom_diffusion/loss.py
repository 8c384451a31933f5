"""Custom Diffusion's loss (paper Eq. 1 with the prior-preservation term of DreamBooth):

    L = masked_mse(ε_θ(x_t, t, c), ε)  over instance rows
      + λ_prior · mse(ε_θ(x_t, t, c_class), ε)  over class rows            (λ_prior: prior_loss_weight)

Mask normalisation follows the official script: the masked squared error is summed over
channels and cells and divided by the number of masked *cells* (not cells × channels), so the
instance term is C (latent channels, 4) times a per-element mean while the prior term is a plain
mean. ``per_element=True`` gives the plain masked mean instead.
"""

from __future__ import annotations

import torch


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
               per_element: bool = False) -> torch.Tensor:
    """pred, target [B, C, h, w]; mask [B, 1, h, w] in {0, 1} -> scalar, the mean over rows of
    each row's masked error. An all-zero mask row counts as one cell (no 0/0 NaN)."""
    if mask.shape[0] != pred.shape[0] or mask.shape[1] != 1 or mask.shape[2:] != pred.shape[2:]:
        raise ValueError(f"mask {tuple(mask.shape)} does not match prediction {tuple(pred.shape)}")
    err = (pred.float() - target.float()).square() * mask                  # (B, C, h, w)
    cells = mask.sum([1, 2, 3]).clamp(min=1.0)                              # (B,)
    if per_element:
        cells = cells * pred.shape[1]
    return (err.sum([1, 2, 3]) / cells).mean()


def custom_diffusion_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                          is_prior: torch.Tensor, prior_loss_weight: float = 1.0,
                          per_element: bool = False) -> tuple[torch.Tensor, dict]:
    """pred/target [B, C, h, w] (ε predictions and noise), mask [B, 1, h, w], is_prior [B] bool
    -> (loss, {"loss/instance", "loss/prior"})."""
    inst = ~is_prior
    if not inst.any():
        raise ValueError("a Custom Diffusion batch needs at least one instance row")
    instance = masked_mse(pred[inst], target[inst], mask[inst], per_element)
    stats = {"loss/instance": instance.detach()}
    loss = instance
    if is_prior.any():
        prior = (pred[is_prior].float() - target[is_prior].float()).square().mean()
        stats["loss/prior"] = prior.detach()
        loss = loss + prior_loss_weight * prior
    return loss, stats


def noisy_latents(scheduler, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_t, t, target) for SD's training objective: t ~ U{0..T-1}, ε ~ N(0, I) from the global
    RNG; target = ε (epsilon prediction) or v (v-prediction pipelines, SD 2.x-768)."""
    noise = torch.randn_like(latents)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],),
                      device=latents.device)
    x_t = scheduler.add_noise(latents, noise, t)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return x_t, t, noise
    if kind == "v_prediction":
        return x_t, t, scheduler.get_velocity(latents, noise, t)
    raise ValueError(f"prediction_type {kind!r} is not supported (epsilon or v_prediction)")
