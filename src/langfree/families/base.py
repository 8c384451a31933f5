"""The Family protocol: what a model family gives the one training loop.

The loop (``langfree.training.loop``) owns the accelerator, gradient sync, EMA, kimg
accounting, ticks, snapshots, resume and non-finite detection. A family owns its networks,
optimisers, the loss of each phase and sampling. Nothing else.

Batch contract (what the loop hands ``loss``): a dict produced by the data pipeline
(``langfree.data``), already on the right device, holding the keys named in ``Family.needs``:
  - ``image``: [B, 3, H, W] float32 in [-1, 1]
  - ``image_emb``: [B, D] float32, L2-normalised encoder image embedding of ``image``
  - ``text_emb``: [B, D] float32, L2-normalised embedding of one caption of the image
    (zeros where the image has no caption; see ``has_caption``)
  - ``has_caption``: [B] bool
  - ``index``: [B] int64, the archive index of each sample
  - ``captions``: list[str] (one per sample, "" if none) — only if requested
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from langfree.encoders.base import TextImageEncoder

NEEDS = frozenset({"image", "image_emb", "text_emb", "has_caption", "captions", "latents",
                   "image_codes", "text_ids"})


@dataclass(frozen=True)
class Phase:
    """One optimisation phase of a training step.

    name:      'G', 'Greg', 'D', 'Dreg' (GAN) or 'main' (diffusion, autoregressive, ...).
    modules:   names (keys of ``Family.modules()``) whose parameters this phase trains; the loop
               sets requires_grad on exactly the parameters that are both in these modules and
               in the phase's optimizer, and all-reduces their gradients.
    optimizer: key into ``Family.optimizers()``. Phases may share one optimizer (G and Greg).
    interval:  run on steps where ``step % interval == 0`` (lazy regularisation: 4 or 16).
    """

    name: str
    modules: tuple[str, ...]
    optimizer: str
    interval: int = 1


@dataclass
class LossOutput:
    """A phase's scalar loss (already multiplied by any lazy-regularisation gain) and stats
    to log (plain floats or 0-d tensors; the loop averages them over a tick)."""

    loss: torch.Tensor
    stats: dict[str, Any] = field(default_factory=dict)


class Family(Protocol):
    """A model family. ``Config`` is a frozen dataclass; ``build`` is the constructor."""

    name: ClassVar[str]
    Config: ClassVar[type]
    config: Any
    encoder: TextImageEncoder | None

    @property
    def needs(self) -> frozenset[str]: ...

    def modules(self) -> dict[str, nn.Module]:
        """Everything saved in a snapshot, by name (including EMA copies)."""

    def ema_pairs(self) -> list[tuple[str, str]]:
        """(source, ema) module names; the loop updates ema from source after each step."""

    def default_ema_kimg(self, batch: int) -> float:
        """Optional: EMA half-life in kimg when the user gives none (loop default 10·batch/32)."""

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimisers by name, built once (their state is saved for resume)."""

    def phases(self) -> list[Phase]: ...

    def loss(self, phase: Phase, nets: dict[str, nn.Module], batch: dict[str, Any],
             step: int) -> LossOutput:
        """Loss of ``phase`` on ``batch``. ``nets`` are the modules to use (the loop's copies
        on the right device); never store them. Randomness comes from the global torch RNG
        (saved and restored by the loop on resume)."""

    def sample(self, condition: torch.Tensor, seeds: list[int], **kwargs: Any) -> torch.Tensor:
        """[B, D] L2-normalised condition embeddings + one seed each -> [B, 3, H, W] in [-1, 1].
        Uses EMA weights; each image depends only on its seed and its condition."""
