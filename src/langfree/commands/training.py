"""``langfree train FAMILY ...``: one command for every family in the registry.

The common options are defined once, below; each family adds its own flags (its TrainSpec,
``langfree.families.<name>.SPEC``), so ``langfree train FAMILY --help`` shows both. The command
only parses: ``langfree.training.run.train(TrainRequest)`` does the work, and the same call runs
a training from Python.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

import typer

# (parameter, annotation, typer.Option) — the options every family's train command takes.
COMMON: list[tuple[str, Any, Any]] = [
    ("data", Path | None, typer.Option(None, "--data", help="Training archive (.zip from `langfree dataset` / `langfree shapes`); on --resume the run's.")),
    ("test_data", Path | None, typer.Option(None, "--test-data", "--test_data", help="Held-out archive: metrics reference and preview captions.")),
    ("preset", str | None, typer.Option(None, "--preset", help="A named configuration of the family (see the list above); default: the family's defaults.")),
    ("encoder", str | None, typer.Option(None, "--encoder", help="Encoder spec: open_clip:NAME/TAG, open_clip:NAME@/path/weights, or a directory from `langfree encoder train`.")),
    ("kimg", float | None, typer.Option(None, "--kimg", help="Training length in thousands of images shown (default 100, or the family's).")),
    ("batch", int | None, typer.Option(None, "--batch", help="Global batch size (all processes; default 32, on --resume the run's).")),
    ("batch_gpu", int | None, typer.Option(None, "--batch-gpu", help="Micro-batch per process (gradient accumulation when smaller).")),
    ("tick", float | None, typer.Option(None, "--tick", help="kimg per progress tick (default 4).")),
    ("snap", int | None, typer.Option(None, "--snap", help="Ticks between snapshots (+ metrics, state; default 50).")),
    ("workers", int, typer.Option(0, "--workers", help="DataLoader worker processes.")),
    ("seed", int | None, typer.Option(None, "--seed", help="Initial weights, data order and noise (default 0, on --resume the run's).")),
    ("deterministic", bool, typer.Option(False, "--deterministic", help="Deterministic kernels (exact resume; slower on GPU).")),
    ("resume", str | None, typer.Option(None, "--resume", help="latest | run dir | state dir: continue a run with its recorded settings.")),
    ("init_from", str | None, typer.Option(None, "--init-from", help="Snapshot / run dir / state: start a NEW run from its weights (fresh optimiser).")),
    ("mixed_precision", str | None, typer.Option(None, "--mixed-precision", help="no | bf16 (default no, on --resume the run's).")),
    ("metrics", str | None, typer.Option(None, "--metrics", help="Comma-separated metrics at each snapshot (fid10k_full, attribute_accuracy, ...) or none.")),
    ("sample", list[str], typer.Option([], "--sample", help="Sampling option for preview grids and metrics: --sample key=value (repeatable).")),
    ("outdir", Path, typer.Option(Path("runs"), "--outdir", help="Where run directories go.")),
    ("gpus", int | None, typer.Option(None, "--gpus", help="Expected process count: start N with `accelerate launch --multi_gpu --num_processes N -m langfree train ...` (or torchrun); --gpus N checks that N are running.")),
    ("ema_kimg", float | None, typer.Option(None, "--ema-kimg", help="EMA half-life in kimg (default: the family's).")),
    ("ema_decay", float | None, typer.Option(None, "--ema-decay", help="EMA decay per step, e.g. 0.9999 (instead of a half-life).")),
    ("ema_rampup", float | None, typer.Option(None, "--ema-rampup", help="Cap the EMA half-life at this fraction of images seen.")),
    ("lr_warmup", float | None, typer.Option(None, "--lr-warmup", help="Linear learning-rate warm-up over this many kimg.")),
    ("lr_schedule", str | None, typer.Option(None, "--lr-schedule", help="constant | cosine (after the warm-up).")),
    ("lr_rampdown", float | None, typer.Option(None, "--lr-rampdown", help="Last fraction of --kimg over which the lr falls to 0 (half cosine).")),
    ("max_ticks", int | None, typer.Option(None, "--max-ticks", help="Stop after this many ticks in total.")),
    ("overrides", list[str], typer.Option([], "--set", help="Override any config field: --set key=value (repeatable, applied last).")),
    ("dry_run", bool, typer.Option(False, "--dry-run", help="Print the resolved config and exit.")),
]
_TYPES = {float: float | None, int: int | None, str: str | None, bool: int | None}


def request_from(family: str, values: dict[str, Any], spec: Any):
    """Parsed CLI values -> a TrainRequest (the family's flags keyed by config field)."""
    from langfree.training.options import TrainOptions
    from langfree.training.run import TrainRequest

    family_options = {}
    for flag in spec.flags:
        value = values.pop(flag.param)
        if flag.switch:
            value = True if value else None   # absent: leave the config's value
        elif flag.type is bool and value is not None:
            if value not in (0, 1):
                raise typer.BadParameter(f"use 0 or 1, not {value}", param_hint=flag.names[0])
            value = bool(value)
        family_options[flag.field] = value
    v = values
    given = dict(
        outdir=str(v["outdir"]), kimg=v["kimg"], batch=v["batch"], batch_gpu=v["batch_gpu"],
        tick_kimg=v["tick"], snap=v["snap"], ema_kimg=v["ema_kimg"], ema_decay=v["ema_decay"],
        ema_rampup=v["ema_rampup"], lr_warmup_kimg=v["lr_warmup"], lr_schedule=v["lr_schedule"],
        lr_rampdown=v["lr_rampdown"], seed=v["seed"], deterministic=v["deterministic"] or None,
        resume=v["resume"], init_from=v["init_from"], workers=v["workers"],
        dry_run=v["dry_run"], mixed_precision=v["mixed_precision"], max_ticks=v["max_ticks"])
    given = {k: x for k, x in given.items() if x is not None}
    options = TrainOptions(**given)
    return TrainRequest(
        family=family, data=v["data"], test_data=v["test_data"], encoder=v["encoder"],
        preset=v["preset"], family_options=family_options, overrides=list(v["overrides"]),
        metrics=v["metrics"], sample=list(v["sample"]), gpus=v["gpus"], options=options,
        given=frozenset(given))


def run_request(request: Any) -> Path | None:
    """Run a TrainRequest; errors the user can fix become one line and exit code 2."""
    from langfree.training.options import TrainingInterrupted
    from langfree.training.run import train, user_errors

    try:
        _print_processes()
        return train(request)
    except TrainingInterrupted as err:  # Ctrl-C: what was saved and the resume command
        print(f"stopped: {err}", file=sys.stderr, flush=True)
        raise typer.Exit(130) from None
    except user_errors() as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise typer.Exit(2) from None
    except OSError as err:  # full disk, read-only folder: snapshots and state are atomic
        where = f"cannot write {err.filename}: {err.strerror}" if err.filename else str(err)
        print(f"error: {where}; the run's last complete snapshot and state are kept (free "
              "space or fix the permissions, then --resume)", file=sys.stderr, flush=True)
        raise typer.Exit(2) from None


def _print_processes() -> None:
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    if state.is_main_process:
        backend = f", backend {state.backend}" if state.num_processes > 1 else ""
        typer.echo(f"langfree train: {state.num_processes} process(es) on {state.device}{backend}",
                   err=True)


def make_command(name: str, spec: Any):
    """A typer command whose signature is the common options plus the family's flags."""
    params, annotations = [], {}
    for param, annotation, option in COMMON:
        params.append(inspect.Parameter(param, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=annotation))
        annotations[param] = annotation
    for flag in spec.flags:
        annotation = bool if flag.switch else _TYPES[flag.type]
        help_text = flag.help + (" (0 or 1)" if flag.type is bool and not flag.switch else "")
        default = False if flag.switch else None
        option = typer.Option(default, *flag.names, help=help_text, rich_help_panel=f"{name} options")
        params.append(inspect.Parameter(flag.param, inspect.Parameter.KEYWORD_ONLY,
                                        default=option, annotation=annotation))
        annotations[flag.param] = annotation

    def command(**values: Any) -> None:
        request = request_from(name, values, spec)
        run_dir = run_request(request)
        if run_dir is not None and not request.options.dry_run:
            typer.echo(f"done: {run_dir}")

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = annotations
    command.__name__ = f"train_{name.replace('-', '_')}"
    command.__doc__ = spec.help + "\n\nAn unknown --preset lists the family's presets."
    return command


def register(train_app: typer.Typer) -> None:
    """One ``langfree train NAME`` per registered family."""
    from langfree.families.registry import family_names, get_spec

    for name in family_names():
        spec = get_spec(name)
        train_app.command(name, help=spec.help)(make_command(name, spec))
