"""Deterministic EDM sampling (Karras et al. 2022, Algorithm 1 with S_churn = 0) with
classifier-free guidance against the zero null condition.

σ_i = (σ_max^(1/ρ) + i/(N-1)·(σ_min^(1/ρ) - σ_max^(1/ρ)))^ρ, i < N, then σ_N = 0; σ 0.002–80,
ρ 7 (NVlabs/edm ``generate.py``; the official MaskDiT ``sample.py`` uses the same schedule and
40 steps in its configs). Each Heun step costs two denoiser evaluations except the last (Euler
to σ = 0): 2N - 1 evaluations per image; guidance doubles the batch of each.

Determinism: image i's starting noise comes from ``torch.Generator().manual_seed(seeds[i])``,
never the global RNG, and nothing else is random, so image i depends only on its seed, its
condition and the options. (Batched matrix products may round differently at other batch sizes;
the difference is at float32 rounding level, see tests/test_maskdit_sampler.py.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Denoise = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""D(x [N, C, h, w], sigma [N], cond [N, D]) -> denoised [N, C, h, w]."""


def sigma_steps(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                rho: float = 7.0) -> torch.Tensor:
    """[steps + 1] float64 noise levels, decreasing from σ_max to σ_min, then 0."""
    if steps < 1:
        raise ValueError(f"steps={steps}: pass at least 1 sampling step (40 is the default)")
    i = torch.arange(steps, dtype=torch.float64)
    frac = i / max(steps - 1, 1)
    t = (sigma_max ** (1 / rho) + frac * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([t, torch.zeros(1, dtype=torch.float64)])


def seeded_noise(seeds: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """[len(seeds), *shape] standard normal float32, row i from its own generator seeded seeds[i]."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s)))
                        for s in seeds])


def guided(denoise: Denoise, guidance_scale: float) -> Denoise:
    """Classifier-free guidance: D_u + w·(D_c - D_u), conditional and null halves in one batch.
    w = 1 is the plain conditional denoiser (returned as is: no second half is computed)."""
    if guidance_scale == 1.0:
        return denoise

    def fn(x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        both = denoise(torch.cat([x, x]), torch.cat([sigma, sigma]),
                       torch.cat([cond, torch.zeros_like(cond)]))  # (2N, C, h, w)
        d_cond, d_null = both.chunk(2)  # (N, C, h, w) each
        return d_null + guidance_scale * (d_cond - d_null)

    return fn


@torch.no_grad()
def edm_heun(denoise: Denoise, noise: torch.Tensor, cond: torch.Tensor, *, steps: int = 40,
             guidance_scale: float = 1.0, sigma_min: float = 0.002, sigma_max: float = 80.0,
             rho: float = 7.0) -> torch.Tensor:
    """Integrate the probability-flow ODE from σ_max·noise to σ = 0 with Heun's method.

    noise: [N, C, h, w] standard normal; cond: [N, D] (zero rows = unconditional).
    Returns [N, C, h, w] float32 samples in the denoiser's data space. The ODE state is kept in
    float64 and the denoiser is called in float32, as the official samplers do."""
    d = guided(denoise, guidance_scale)
    t = sigma_steps(steps, sigma_min, sigma_max, rho).to(noise.device)  # (steps + 1,)
    n = noise.shape[0]
    x = noise.to(torch.float64) * t[0]  # (N, C, h, w)
    for i in range(steps):
        t_cur, t_next = t[i], t[i + 1]
        den = d(x.float(), t_cur.float().expand(n), cond).to(torch.float64)
        slope = (x - den) / t_cur  # dx/dσ
        x_next = x + (t_next - t_cur) * slope  # Euler step
        if i < steps - 1:  # second-order correction (not at σ = 0)
            den2 = d(x_next.float(), t_next.float().expand(n), cond).to(torch.float64)
            slope2 = (x_next - den2) / t_next
            x_next = x + (t_next - t_cur) * (0.5 * slope + 0.5 * slope2)
        x = x_next
    return x.float()
