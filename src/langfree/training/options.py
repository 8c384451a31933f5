"""Training options, their validation/resolution, and process setup (via Accelerate)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch


class TrainingError(RuntimeError):
    """Training cannot go on (bad options, non-finite values); the message says why/what to do."""


@dataclass
class TrainOptions:
    outdir: str = "runs"
    kimg: float = 100.0  # length of training in thousands of images
    batch: int = 32  # global batch (all processes)
    batch_gpu: int | None = None  # micro-batch per process; None = batch // processes
    tick_kimg: float = 4.0  # progress report interval
    snap: int = 50  # ticks between snapshots (+ metrics, state); 0 = end only
    ema_kimg: float | None = None  # EMA half-life; None = family default
    ema_rampup: float | None = None  # cap the half-life at rampup * images seen
    # Fraction of --kimg at the end over which every learning rate falls to 0 (half cosine);
    # None = family default, 0 = constant lr (StyleGAN2). A short run ends on its average, not
    # on the last noisy steps of a high lr.
    lr_rampdown: float | None = None
    seed: int = 0
    deterministic: bool = False  # deterministic kernels: exact resume, slower on GPU
    resume: str | None = None  # 'latest' | run dir | state dir
    workers: int = 0  # DataLoader worker processes
    dry_run: bool = False  # print the resolved config and exit
    mixed_precision: str = "no"  # 'no' | 'bf16' (autocast; fp16 is not offered)
    max_ticks: int | None = None  # stop after this many ticks in total
    desc: str | None = None  # run dir suffix; None = family name + batch


class Processes:
    """Process setup via Accelerate (torchrun / accelerate launch env -> process group)."""

    def __init__(self, options: TrainOptions):
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())
        self.rank, self.world, self.device = state.process_index, state.num_processes, state.device
        if options.mixed_precision not in ("no", "bf16"):
            raise TrainingError(f"mixed_precision {options.mixed_precision!r}: use 'no' or 'bf16'")
        self.autocast_dtype = torch.bfloat16 if options.mixed_precision == "bf16" else None

    def autocast(self) -> Any:
        return torch.autocast(
            self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
        )

    def broadcast_object(self, obj: Any) -> Any:
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


def resolve_options(family: Any, options: TrainOptions, procs: Processes) -> dict[str, Any]:
    """Validated, fully resolved options (what config.json records)."""
    batch, world = options.batch, procs.world
    if batch <= 0 or batch % world:
        raise TrainingError(
            f"--batch {batch} must be a positive multiple of the process count {world}"
        )
    batch_gpu = options.batch_gpu or batch // world
    if batch_gpu < 0 or (batch // world) % batch_gpu:
        raise TrainingError(
            f"--batch-gpu {batch_gpu} must divide the per-process batch {batch // world}"
        )
    if options.kimg <= 0 or options.tick_kimg <= 0:
        raise TrainingError("--kimg and --tick-kimg must be positive")
    ema_kimg = options.ema_kimg
    if ema_kimg is None:
        default = getattr(family, "default_ema_kimg", None)
        ema_kimg = default(batch) if callable(default) else default
    if ema_kimg is None:
        ema_kimg = 10.0 * batch / 32  # StyleGAN2-ADA's convention
    lr_rampdown = options.lr_rampdown
    if lr_rampdown is None:
        lr_rampdown = getattr(getattr(family, "config", None), "lr_rampdown", 0.0)
    if not 0.0 <= lr_rampdown <= 1.0:
        raise TrainingError(f"lr_rampdown {lr_rampdown}: must be in [0, 1] (fraction of --kimg)")
    return {
        **dataclasses.asdict(options),
        "batch_gpu": batch_gpu,
        "ema_kimg": float(ema_kimg),
        "lr_rampdown": float(lr_rampdown),
        "processes": world,
        "accumulation": batch // world // batch_gpu,
        "device": str(procs.device),
    }


def full_config(family: Any, run_config: dict, resolved: dict) -> dict[str, Any]:
    from langfree.config import to_dict

    encoder = getattr(family, "encoder", None)
    return {
        "family": family.name,
        "config": to_dict(family.config),
        "encoder": getattr(encoder, "spec", None),
        "run": run_config,
        "train": resolved,
    }


def run_desc(family: Any, options: TrainOptions) -> str:
    """The run dir suffix: ``--desc`` or family name + batch."""
    return options.desc or f"{family.name}-batch{options.batch}"
