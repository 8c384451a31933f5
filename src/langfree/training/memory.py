"""Refuse a configuration whose memory clearly exceeds the machine, before it is built.

A model too large for the machine is otherwise built, starts training and is killed by the
kernel with no message, leaving a run directory and a features sidecar behind (issue 10: a
512 px zip gave LAFITE's defaults, 40 M parameters, batch 32). The estimate is a lower bound,
so only a configuration that cannot fit is refused:

- parameters: counted exactly by building the family on PyTorch's ``meta`` device (shapes
  only, no memory, well under a second); trained modules cost 16 bytes per parameter (fp32
  weights, gradients, Adam's two moments), EMA copies 4;
- activations: for image networks whose config follows StyleGAN's width rule (``resolution``,
  ``channel_base``, ``channel_max``: ``min(channel_base // r, channel_max)`` channels at
  resolution r), ``ACTIVATION_FLOATS`` floats per feature-map element are kept for the
  backward pass (measured on LAFITE's G + D + R1 step, see below), for every image of a
  micro-batch (``--batch-gpu``). Other configs count parameters only.

Available memory is the free GPU memory on CUDA, else the RAM the kernel reports available
(``psutil.virtual_memory().available``). ``LANGFREE_SKIP_MEMORY_CHECK=1`` skips the check.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from langfree.training.options import TrainingError

# Floats alive per feature-map element (channels x pixels, summed over resolutions) for one
# image in one LAFITE training step (G forward + D on fakes and reals + R1 + the encoder on
# fakes): measured 12.2 as the peak-RSS slope over the micro-batch on CPU (256 px, channel_base
# 2048, channel_max 32: 1426 MB at 2 images, 1706 MB at 8). 10 keeps the estimate a lower bound.
# LAFITE's defaults at 512 px then need >= 1.3 GB per image, 41 GB for a batch of 32.
ACTIVATION_FLOATS = 10
BYTES_TRAINED, BYTES_EMA = 16, 4  # fp32 weight + gradient + Adam m, v; an EMA copy: weights only


@dataclass(frozen=True)
class Estimate:
    parameters: int          # all parameters of the family's modules
    parameter_bytes: int     # with gradients and optimiser state
    activation_bytes: int    # 0 when the config gives no feature-map geometry
    images: int              # micro-batch the activations are counted for
    resolution: int | None

    @property
    def total(self) -> int:
        return self.parameter_bytes + self.activation_bytes


def available_bytes() -> tuple[int, str]:
    """(free bytes, what they are) on the device training will use."""
    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return int(free), "free GPU memory"
    import psutil

    return int(psutil.virtual_memory().available), "available RAM"


def feature_map_elements(config: Any) -> int:
    """Channels x pixels summed over the resolutions 4 .. R of a StyleGAN-rule config (0 when the
    config has no such geometry)."""
    fields = ("resolution", "channel_base", "channel_max")
    if not all(isinstance(getattr(config, f, None), int) for f in fields):
        return 0
    total, r = 0, 4
    while r <= config.resolution:
        total += r * r * min(config.channel_base // r, config.channel_max)
        r *= 2
    return total


def estimate(family_class: Any, config: Any, encoder: Any, images: int) -> Estimate | None:
    """The lower-bound memory of training ``family_class(config, encoder)`` on micro-batches of
    ``images``; None when the family cannot be built on the meta device (it reads files)."""
    try:
        with torch.device("meta"):
            family = family_class(config, encoder)
            modules = family.modules()
            ema = {target for _, target in family.ema_pairs()}
    except Exception:  # noqa: BLE001 - the estimate is advisory: the real build reports errors
        return None
    parameters = param_bytes = 0
    seen: set[int] = set()
    for name, module in modules.items():
        for p in module.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            parameters += p.numel()
            param_bytes += p.numel() * (BYTES_EMA if name in ema or not p.requires_grad
                                        else BYTES_TRAINED)
    activations = 4 * ACTIVATION_FLOATS * feature_map_elements(config) * images
    return Estimate(parameters, param_bytes, activations, images,
                    getattr(config, "resolution", None))


def check_memory(family_class: Any, config: Any, encoder: Any, images: int) -> Estimate | None:
    """Raise TrainingError (one line: the estimate, what is available, the options that lower it)
    when the estimate exceeds the available memory."""
    if os.environ.get("LANGFREE_SKIP_MEMORY_CHECK") == "1":
        return None
    est = estimate(family_class, config, encoder, images)
    if est is None:
        return None
    free, what = available_bytes()
    if est.total <= free:
        return est
    gb = 2 ** 30
    parts = [f"{est.parameters / 1e6:.1f} M parameters: {est.parameter_bytes / gb:.1f} GB with "
             "gradients and optimiser state"]
    lower = ["a smaller --preset (or --set for the widths)"]
    if est.activation_bytes:
        parts.append(f"activations of {images} images of {est.resolution} px: "
                     f"{est.activation_bytes / gb:.1f} GB")
        lower = ["--batch-gpu (smaller micro-batches, the same training)", "--batch",
                 *lower, "an archive at a lower resolution (`langfree dataset ... --resolution`)"]
    raise TrainingError(f"this configuration needs at least {est.total / gb:.1f} GB "
                      f"({'; '.join(parts)}) but {free / gb:.1f} GB of {what} is left; lower "
                      + ", ".join(lower) + "; nothing was built or written")
