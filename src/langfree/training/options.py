"""Training options, their validation/resolution, and process setup (via Accelerate)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch


class TrainingError(RuntimeError):
    """Training cannot go on (bad options, non-finite values); the message says why/what to do."""


class TrainingInterrupted(TrainingError):
    """Ctrl-C (SIGINT) stopped the loop; the message says what was saved and how to resume."""


@dataclass
class TrainOptions:
    outdir: str = "runs"
    kimg: float = 100.0  # length of training in thousands of images
    batch: int = 32  # global batch (all processes)
    batch_gpu: int | None = None  # micro-batch per process; None = batch // processes
    tick_kimg: float = 4.0  # progress report interval
    snap: int = 50  # ticks between snapshots (+ metrics, state); 0 = end only
    # EMA: a half-life in kimg (StyleGAN) or a per-step decay (diffusion); None = family default
    ema_kimg: float | None = None
    ema_decay: float | None = None
    ema_rampup: float | None = None  # cap the half-life at rampup * images seen
    # Learning-rate schedule (None = the family's lr_schedule()): linear warm-up over
    # lr_warmup_kimg, then constant or a cosine over the run, and a half-cosine ramp-down to 0
    # over the last lr_rampdown fraction of --kimg (0 = constant lr, StyleGAN2).
    lr_warmup_kimg: float | None = None
    lr_schedule: str | None = None
    lr_rampdown: float | None = None
    seed: int = 0
    deterministic: bool = False  # deterministic kernels: exact resume, slower on GPU
    resume: str | None = None  # 'latest' | run dir | state dir
    init_from: str | None = None  # weights only (snapshot, run dir or state): new run, fresh optimiser
    workers: int = 0  # DataLoader worker processes
    dry_run: bool = False  # print the resolved config and exit
    mixed_precision: str = "no"  # 'no' | 'bf16' (autocast; fp16 is not offered)
    max_ticks: int | None = None  # stop after this many ticks in total
    desc: str | None = None  # run dir suffix; None = family name + batch


# Options that may change on resume (they do not change what the run computes).
RESUMABLE_CHANGES = frozenset({"outdir", "kimg", "tick_kimg", "snap", "resume", "workers",
                               "dry_run", "max_ticks", "desc", "init_from"})


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

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def broadcast_object(self, obj: Any) -> Any:
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


def check_options(options: TrainOptions, world: int = 1) -> None:
    """Refuse options that cannot run, naming the CLI option (``--tick`` sets ``tick_kimg``).
    Called before anything is loaded or built (training/run.py) and again by the loop."""
    batch = options.batch
    if batch <= 0 or batch % world:
        raise TrainingError(
            f"--batch {batch} must be a positive multiple of the process count {world}"
        )
    batch_gpu = options.batch_gpu or batch // world
    if batch_gpu < 0 or (batch // world) % batch_gpu:
        raise TrainingError(
            f"--batch-gpu {batch_gpu} must divide the per-process batch {batch // world}"
        )
    for option, value in (("--kimg", options.kimg), ("--tick", options.tick_kimg)):
        if not value > 0:
            raise TrainingError(f"{option} {value:g}: must be positive (kimg = thousands of images)")
    if options.snap < 0:
        raise TrainingError(f"--snap {options.snap}: must be >= 0 (0 = a snapshot at the end only)")
    if options.max_ticks is not None and options.max_ticks < 1:
        raise TrainingError(f"--max-ticks {options.max_ticks}: must be >= 1")
    if options.workers < 0:
        raise TrainingError(f"--workers {options.workers}: must be >= 0")
    if options.mixed_precision not in ("no", "bf16"):
        raise TrainingError(f"--mixed-precision {options.mixed_precision!r}: use 'no' or 'bf16'")
    if options.ema_kimg is not None and options.ema_decay is not None:
        raise TrainingError("--ema-kimg and --ema-decay both given: an EMA is a half-life or a "
                            "decay, pass one")
    if options.resume and options.init_from:
        raise TrainingError("--resume and --init-from both given: --resume continues a run "
                            "(its weights, optimisers and data position); --init-from starts a "
                            "new run from a snapshot's weights. Pass one.")


def resolve_options(family: Any, options: TrainOptions, procs: Processes) -> dict[str, Any]:
    """Validated, fully resolved options (what config.json records)."""
    batch, world = options.batch, procs.world
    check_options(options, world)
    batch_gpu = options.batch_gpu or batch // world
    ema = resolve_ema(family, options, batch)
    schedule = resolve_schedule(family, options)
    return {
        **dataclasses.asdict(options),
        "batch_gpu": batch_gpu,
        "ema_kimg": ema.half_life_kimg,
        "ema_decay": ema.decay,
        "ema_rampup": ema.rampup,
        "lr_warmup_kimg": schedule.warmup_kimg,
        "lr_schedule": schedule.kind,
        "lr_rampdown": schedule.rampdown,
        "lr_min_scale": schedule.min_scale,
        "processes": world,
        "accumulation": batch // world // batch_gpu,
        "device": str(procs.device),
    }


def resolve_ema(family: Any, options: TrainOptions, batch: int) -> Any:
    """The options' EMA if given, else the family's ``default_ema(batch)``, else StyleGAN2-ADA's
    half-life of 10 · batch / 32 kimg."""
    from langfree.families.base import EMA, optional

    if options.ema_kimg is not None and options.ema_decay is not None:
        raise TrainingError("--ema-kimg and --ema-decay both given: an EMA is a half-life or a "
                            "decay, pass one")
    try:
        if options.ema_kimg is not None or options.ema_decay is not None:
            return EMA(options.ema_kimg, options.ema_decay, options.ema_rampup)
        ema = optional(family, "default_ema", batch) or EMA(10.0 * batch / 32)
        if options.ema_rampup is not None:
            ema = dataclasses.replace(ema, rampup=options.ema_rampup)
        return ema
    except ValueError as exc:
        raise TrainingError(str(exc)) from None


def resolve_schedule(family: Any, options: TrainOptions) -> Any:
    """The family's ``lr_schedule()`` with any field the options set replaced."""
    from langfree.families.base import LRSchedule, optional

    base = optional(family, "lr_schedule") or LRSchedule()
    changes = {k: v for k, v in (("warmup_kimg", options.lr_warmup_kimg),
                                 ("kind", options.lr_schedule),
                                 ("rampdown", options.lr_rampdown)) if v is not None}
    try:
        return dataclasses.replace(base, **changes)
    except ValueError as exc:
        raise TrainingError(str(exc)) from None


def lr_scale(schedule: dict[str, Any], nimg: int, total_nimg: int) -> float:
    """The learning-rate multiplier after ``nimg`` images (a pure function: resume is exact)."""
    import math

    scale = 1.0
    warm = schedule["lr_warmup_kimg"] * 1000
    if warm > 0 and nimg < warm:
        scale = nimg / warm
    if schedule["lr_schedule"] == "cosine":
        t = (nimg - warm) / max(total_nimg - warm, 1)
        t = min(max(t, 0.0), 1.0)
        floor = schedule.get("lr_min_scale", 0.0)
        scale *= floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
    ramp = schedule["lr_rampdown"]
    if ramp > 0:
        t = (nimg / max(total_nimg, 1) - (1.0 - ramp)) / ramp
        scale *= 0.5 * (1.0 + math.cos(math.pi * min(max(t, 0.0), 1.0)))
    return scale


def _differences(old: Any, new: Any, prefix: str) -> list[str]:
    """Dotted keys whose values differ (keys missing on one side are not compared: a config
    recorded by an older version lacks fields that have defaults now)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) & set(new)):
            out += _differences(old[key], new[key], f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix[:-1]} (run: {old!r}, now: {new!r})"]


def check_resume_config(path: Any, config: dict[str, Any]) -> None:
    """Refuse to resume a run whose recorded config differs from this one, naming the keys."""
    import json
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"--resume: {path} is missing; the run directory is incomplete")
    old = json.loads(path.read_text())
    diffs = []
    for section in ("family", "config", "encoder"):
        diffs += _differences({section: old.get(section)}, {section: config.get(section)}, "")
    if "train" in config:  # without: the early check of family, config and encoder (run.py)
        train_old = {k: v for k, v in (old.get("train") or {}).items()
                     if k not in RESUMABLE_CHANGES}
        train_new = {k: v for k, v in config["train"].items() if k not in RESUMABLE_CHANGES}
        diffs += _differences(train_old, train_new, "train.")
    if diffs:
        raise TrainingError(
            f"--resume {path.parent}: the run was started with other settings: "
            + "; ".join(diffs) + ". Resume with the run's settings (leave these options "
            "unset, or pass the recorded values), or start a new run (with --init-from "
            "to start from its weights)")


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
