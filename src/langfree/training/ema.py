"""Exponential moving average of weights, specified by its half-life in images.

After a step of ``batch`` images, ema <- beta * ema + (1 - beta) * source with
beta = 0.5 ** (batch / half_life_images): the contribution of a weight halves every
``ema_kimg`` thousand images whatever the batch size (StyleGAN2-ADA's convention). With a
rampup r, the half-life is capped at r * images seen so far, so early EMA tracks faster.
"""

from __future__ import annotations

import torch
from torch import nn


def ema_beta(batch: int, ema_kimg: float | None, nimg: int = 0, rampup: float | None = None,
             decay: float | None = None) -> float:
    """Decay for one step of ``batch`` images; ``nimg``: images seen before this step. A per-step
    ``decay`` (instead of ``ema_kimg``) is the half-life batch·ln 2 / -ln(decay) images, so the
    rampup caps it the same way: without one, a 0.999 EMA still holds 0.999^n of the initial
    weights after n steps (29 % after 1 250), which is what a short run would sample from."""
    if decay is not None:
        if rampup is None:
            return decay
        return min(decay, 0.5 ** (batch / max(nimg * rampup, 1e-8)))
    half_life = ema_kimg * 1000
    if rampup is not None:
        half_life = min(half_life, nimg * rampup)
    return 0.5 ** (batch / max(half_life, 1e-8))


@torch.no_grad()
def update_ema(ema: nn.Module, source: nn.Module, beta: float) -> None:
    """Parameters are averaged; buffers (e.g. running stats, StyleGAN's w_avg) are copied.
    Both in one foreach call each (not a Python loop over tensors), pairing tensors by name."""
    src_params = dict(source.named_parameters())
    pairs = [(p_ema, src_params[name].detach()) for name, p_ema in ema.named_parameters()]
    floats = [(e, s) for e, s in pairs if e.is_floating_point()]
    if floats:
        torch._foreach_lerp_([e for e, _ in floats], [s for _, s in floats], 1.0 - beta)
    for e, s in pairs:
        if not e.is_floating_point():
            e.copy_(s)
    src_buffers = dict(source.named_buffers())
    buffers = [(b, src_buffers[name]) for name, b in ema.named_buffers()]
    if buffers:
        torch._foreach_copy_([b for b, _ in buffers], [s for _, s in buffers])
