"""The Family protocol: what a model family gives the one training loop.

The loop (``langfree.training.loop``) owns the accelerator, gradient sync, clipping, learning-
rate schedules, EMA, kimg accounting, ticks, snapshots, resume and non-finite detection. A family
owns its networks, optimisers, the loss of each phase and sampling. Nothing else.

Batch contract (what the loop hands ``loss``): a dict built by ``langfree.data.pipeline`` from
``Family.needs``, already on the right device:
  - ``image``: [B, 3, H, W] float32 in [-1, 1]
  - ``image_emb``: [B, D] float32, L2-normalised encoder image embedding of ``image``
  - ``text_emb``: [B, D] float32, L2-normalised embedding of one caption of the image
    (zeros where the image has no caption; see ``has_caption``)
  - ``has_caption``: [B] bool
  - ``caption``: list[str], one caption per sample ("" where none) — need "captions"
  - ``index``: [B] int64, the archive index of each sample
  - sidecar fields (need "latents", "image_codes", ...): the names the family's
    ``Producer`` writes, one row per image, e.g. ``latents_mean`` [B, C, h, w]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from langfree.encoders.base import TextImageEncoder

NEEDS = frozenset({"image", "image_emb", "text_emb", "has_caption", "captions", "latents",
                   "image_codes", "text_ids"})
LR_KINDS = ("constant", "cosine")


@dataclass(frozen=True)
class Phase:
    """One optimisation phase of a training step.

    name:      'G', 'Greg', 'D', 'Dreg' (GAN) or 'main' (diffusion, autoregressive, ...).
    modules:   names (keys of ``Family.modules()``) whose parameters this phase trains; the loop
               sets requires_grad on exactly the parameters that are both in these modules and
               in the phase's optimizer, and all-reduces their gradients.
    optimizer: key into ``Family.optimizers()``. Phases may share one optimizer (G and Greg).
    interval:  run on steps where ``step % interval == 0`` (lazy regularisation: 4 or 16).
    clip_grad_norm: clip the phase's global gradient norm (after the all-reduce) to this value;
               None = no clipping.
    """

    name: str
    modules: tuple[str, ...]
    optimizer: str
    interval: int = 1
    clip_grad_norm: float | None = None


@dataclass
class LossOutput:
    """A phase's scalar loss (already multiplied by any lazy-regularisation gain) and stats
    to log (plain floats or 0-d tensors; the loop averages them over a tick)."""

    loss: torch.Tensor
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Progress:
    """Where training is, handed to ``Family.loss`` (mask-ratio schedules, warm-ups, ...).

    step: optimisation steps done before this one; nimg: images shown before this step;
    total_nimg: the run's length (``--kimg`` · 1000)."""

    step: int
    nimg: int
    total_nimg: int

    @property
    def kimg(self) -> float:
        return self.nimg / 1000

    @property
    def fraction(self) -> float:
        """0 at the first step, -> 1 at the end of the run."""
        return min(self.nimg / max(self.total_nimg, 1), 1.0)


@dataclass(frozen=True)
class LRSchedule:
    """Learning-rate multiplier over training, a pure function of images seen (exact resume).

    warmup_kimg: linear ramp from 0 over the first kimg; kind: "constant" or "cosine" (half
    cosine from 1 to ``min_scale`` over the run after the warm-up); rampdown: the last fraction
    of the run falls to 0 by a half cosine (StyleGAN-style; 0 = off)."""

    warmup_kimg: float = 0.0
    kind: str = "constant"
    rampdown: float = 0.0
    min_scale: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in LR_KINDS:
            raise ValueError(f"lr schedule {self.kind!r}: use one of {', '.join(LR_KINDS)}")
        if not 0.0 <= self.rampdown <= 1.0:
            raise ValueError(f"lr_rampdown {self.rampdown}: must be in [0, 1] (fraction of --kimg)")
        if self.warmup_kimg < 0 or not 0.0 <= self.min_scale <= 1.0:
            raise ValueError(f"lr warm-up {self.warmup_kimg} must be >= 0 and min_scale "
                             f"{self.min_scale} in [0, 1]")


@dataclass(frozen=True)
class EMA:
    """EMA of weights as a half-life in kimg (StyleGAN convention, batch-size independent) or a
    per-step decay (diffusion convention, e.g. 0.9999). Exactly one is set."""

    half_life_kimg: float | None = None
    decay: float | None = None
    rampup: float | None = None  # cap the half-life at rampup · images seen

    def __post_init__(self) -> None:
        if (self.half_life_kimg is None) == (self.decay is None):
            raise ValueError("EMA: give either half_life_kimg or decay, not both or neither")
        if self.decay is not None and not 0.0 <= self.decay < 1.0:
            raise ValueError(f"EMA decay {self.decay}: must be in [0, 1)")
        if self.half_life_kimg is not None and self.half_life_kimg < 0:
            raise ValueError(f"EMA half-life {self.half_life_kimg}: must be >= 0")


@dataclass(frozen=True)
class Reference:
    """A frozen component recorded in snapshots by how to load it and what it holds, never
    copied: ``spec`` (a path or id the family's ``prepare`` understands) and ``digest`` (a
    content hash of its weights; loading a snapshot checks it)."""

    spec: str
    digest: str


class Family(Protocol):
    """A model family. ``Config`` and ``SampleOptions`` are frozen dataclasses."""

    name: ClassVar[str]
    Config: ClassVar[type]
    SampleOptions: ClassVar[type]
    config: Any
    encoder: TextImageEncoder | None

    @property
    def needs(self) -> frozenset[str]: ...

    def modules(self) -> dict[str, nn.Module]:
        """Every module the loop moves to the device, by name (EMA copies and frozen parts too).
        The resumable state saves all of them but the references."""

    def ema_pairs(self) -> list[tuple[str, str]]:
        """(source, ema) module names; the loop updates ema from source after each step."""

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimisers by name, built once (their state is saved for resume)."""

    def phases(self) -> list[Phase]: ...

    def loss(self, phase: Phase, nets: dict[str, nn.Module], batch: dict[str, Any],
             progress: Progress) -> LossOutput:
        """Loss of ``phase`` on ``batch``. ``nets`` are the modules to use (the loop's copies
        on the right device); never store them. Randomness comes from the global torch RNG
        (saved and restored by the loop on resume)."""

    def sample(self, conditions: Any, seeds: list[int], options: Any = None) -> torch.Tensor:
        """``langfree.sampling.conditions.Conditions`` (one row per image) + one seed each +
        a ``SampleOptions`` (None = defaults) -> [B, 3, H, W] in [-1, 1]. Uses EMA weights; each
        image depends only on its row, its seed and the options; the global RNG is untouched."""


# Optional members (the engine checks with ``hasattr``); their defaults:
#   snapshot_modules() -> tuple[str, ...]      every module but the references
#   references() -> dict[str, Reference]       {}
#   assets() -> dict[str, bytes]               {} ; load_assets(dict[str, bytes]) -> None
#   export(dirpath: Path) -> None              no export
#   producers() -> dict[str, Producer]         {} (langfree.data.sidecar.Producer)
#   default_ema(batch) -> EMA                  EMA(half_life_kimg=10 * batch / 32)
#   lr_schedule() -> LRSchedule                LRSchedule()
#   after_backward(phase, nets) -> None        nothing
#   parameter_counts() -> dict[str, int]       trainable modules' sizes
#   activation_bytes_per_image() -> int        memory check: bytes kept per training image
#   sample_batch: int                          DEFAULT_SAMPLE_BATCH: images per ``sample`` call the
#                                              family draws fastest (evaluation, the quickstart)


DEFAULT_SAMPLE_BATCH = 32


def sample_batch(family: Any) -> int:
    """Images per ``sample`` call in evaluation: the family's ``sample_batch``, else 32."""
    return int(getattr(family, "sample_batch", DEFAULT_SAMPLE_BATCH))


def optional(family: Any, name: str, *args: Any, default: Any = None) -> Any:
    """Call the optional protocol member ``name`` if the family has it, else ``default``."""
    member = getattr(family, name, None)
    return member(*args) if callable(member) else default


def snapshot_module_names(family: Any) -> tuple[str, ...]:
    refs = optional(family, "references", default={}) or {}
    names = optional(family, "snapshot_modules")
    if names is None:
        names = tuple(n for n in family.modules() if n not in refs)
    return tuple(names)


def state_module_names(family: Any) -> tuple[str, ...]:
    refs = optional(family, "references", default={}) or {}
    return tuple(n for n in family.modules() if n not in refs)


def reconstruction_error(x: torch.Tensor, recon: torch.Tensor, kind: str) -> torch.Tensor:
    """An autoencoder's reconstruction loss (the VAE's and the VQGAN's ``rec_loss``): mean
    absolute (``l1``) or squared (``l2``) error per pixel value."""
    return (x - recon).abs().mean() if kind == "l1" else (x - recon).square().mean()


def adam(params: Any, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
         weight_decay: float = 0.0, decoupled: bool = True) -> torch.optim.Optimizer:
    """Every family's optimiser: AdamW (``decoupled``) or Adam (L2 ``weight_decay``) on
    parameters or param groups, with PyTorch's fused kernel wherever it runs (every tensor a
    float on the CPU or CUDA): one kernel over all tensors, not a Python loop per tensor. The
    update rule is the same; on this CPU it steps MaskDiT's 96 tensors ~5x faster."""
    groups = [dict(g, params=list(g["params"])) if isinstance(g, dict) else g for g in params]
    tensors = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda")
                                  for p in tensors)
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    return cls(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
               fused=fused or None)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_counts(family: Any) -> dict[str, int]:
    counts = optional(family, "parameter_counts")
    if counts is not None:
        return counts
    ema = {e for _, e in family.ema_pairs()}
    refs = optional(family, "references", default={}) or {}
    return {n: count_parameters(m) for n, m in family.modules().items()
            if n not in ema and n not in refs}


__all__ = ["EMA", "NEEDS", "Family", "LRSchedule", "LossOutput", "Phase", "Progress", "adam",
           "Reference", "count_parameters", "optional", "parameter_counts",
           "snapshot_module_names", "state_module_names"]
