"""``langfree train ...``: the generic part shared by every family's train command.

Family-specific commands (``langfree train lafite``, ...) parse their options, build the family,
dataset, preview and metrics callables, then call ``run_training``. Torch and friends are
imported inside functions so ``langfree --help`` stays fast.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer


def _user_errors() -> tuple[type[BaseException], ...]:
    from langfree.checkpoint import SnapshotError
    from langfree.config import ConfigError
    from langfree.training.loop import TrainingError
    from langfree.training.state import StateError

    return (TrainingError, StateError, SnapshotError, ConfigError)


def _print_processes() -> None:
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    if state.is_main_process:
        backend = f", backend {state.backend}" if state.num_processes > 1 else ""
        typer.echo(
            f"langfree train: {state.num_processes} process(es) on {state.device}{backend}",
            err=True,
        )


def run_training(
    family: Any,
    dataset: Any,
    options: Any,
    run_config: dict,
    preview: Callable | None = None,
    metrics: Callable | None = None,
) -> Path:
    """Run the one training loop; errors the user can fix become one line and exit code 2."""
    from langfree.training.loop import train

    try:
        _print_processes()
        return train(family, dataset, options, run_config, preview=preview, metrics=metrics)
    except _user_errors() as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise typer.Exit(2) from None
