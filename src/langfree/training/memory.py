"""Refuse a configuration whose memory clearly exceeds the machine, before it is built.

A model too large for the machine is otherwise built, starts training and is killed by the
kernel with no message, leaving a run directory and a features sidecar behind (issue 10: a
512 px zip gave a 40 M-parameter default model at batch 32). The estimate is a lower bound,
so only a configuration that cannot fit is refused:

- parameters: counted exactly by building the family on PyTorch's ``meta`` device (shapes
  only, no memory, well under a second); trained modules cost 16 bytes per parameter (fp32
  weights, gradients, Adam's two moments), EMA copies 4;
- activations: what the family reports for one image of a micro-batch (``--batch-gpu``)
  through its optional ``activation_bytes_per_image()`` (a family keeps that measurement beside
  its networks); families without it count parameters only.

Available memory is the free GPU memory on CUDA, else the RAM the kernel reports available
(``psutil.virtual_memory().available``). ``LANGFREE_SKIP_MEMORY_CHECK=1`` skips the check.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from langfree.families.base import optional
from langfree.training.options import TrainingError

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
    activations = (optional(family, "activation_bytes_per_image", default=0) or 0) * images
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
