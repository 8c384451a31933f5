"""Resumable training state: modules, optimisers, RNG, progress — safetensors + JSON only.

Layout: ``run_dir/state/step-<000000123>/`` (one complete directory per save, written through
a temp dir + rename, older ones deleted after the new one is in place):
  - ``<module>.safetensors`` for every module (EMA copies included)
  - ``optim-<name>.safetensors`` + ``optim-<name>.json``: the optimiser state dict flattened
  - ``rng-<rank>.safetensors`` + ``rng-<rank>.json``: torch/CUDA/numpy/python RNG of each rank
  - ``progress.json``: step, nimg (= data position), tick, elapsed time, log sizes

Optimiser state dicts are nested dicts/lists of tensors and numbers; ``flatten`` moves every
tensor into a flat dict (for safetensors) and leaves a JSON tree pointing at them.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from langfree.checkpoint import (
    atomic_dir,
    list_complete,
    load_tensors,
    save_tensors,
    write_json,
)

_STEP_RE = re.compile(r"^step-(\d+)$")


class StateError(ValueError):
    """Resume state missing or inconsistent; the message says what to do."""


# ---------------------------------------------------------------- tensor/JSON trees


def flatten(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "t") -> Any:
    """JSON tree of ``obj`` with tensors moved to ``tensors`` (referenced by key)."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}.{len(tensors)}"
        tensors[key] = obj
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: flatten(v, tensors, prefix) for k, v in obj.items()}
        return {"__items__": [[k, flatten(v, tensors, prefix)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten(v, tensors, prefix) for v in obj]}
    if isinstance(obj, list):
        return [flatten(v, tensors, prefix) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise StateError(f"cannot save a value of type {type(obj).__name__} in training state")


def unflatten(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, list):
        return [unflatten(v, tensors) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if "__tensor__" in tree:
        return tensors[tree["__tensor__"]]
    if "__items__" in tree:
        return {k: unflatten(v, tensors) for k, v in tree["__items__"]}
    if "__tuple__" in tree:
        return tuple(unflatten(v, tensors) for v in tree["__tuple__"])
    return {k: unflatten(v, tensors) for k, v in tree.items()}


def save_tree(base: Path, obj: Any) -> None:
    tensors: dict[str, torch.Tensor] = {}
    tree = flatten(obj, tensors)
    save_tensors(base.with_suffix(".safetensors"), tensors)
    write_json(base.with_suffix(".json"), tree)


def load_tree(base: Path) -> Any:
    tensors = load_tensors(base.with_suffix(".safetensors"))
    return unflatten(json.loads(base.with_suffix(".json").read_text()), tensors)


# ---------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    state["python"] = [state["python"][0], list(state["python"][1]), state["python"][2]]
    name, keys, pos, has_gauss, gauss = state["numpy"]
    state["numpy"] = [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


def no_rng(fn: Callable, *args: Any) -> Any:
    """Run ``fn`` leaving every global RNG as it was (previews/metrics must not shift training)."""
    saved = rng_state()
    try:
        return fn(*args)
    finally:
        set_rng_state(saved)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- save / load


def write_state(
    run_dir: Path,
    progress: dict[str, Any],
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    rngs: list[dict[str, Any]],
) -> Path:
    """Called on rank 0 only, with the RNG states of all ranks (index = rank)."""
    root = Path(run_dir) / "state"
    target = root / f"step-{progress['step']:09d}"
    with atomic_dir(target) as tmp:
        for name, module in modules.items():
            save_tensors(tmp / f"{name}.safetensors", module.state_dict())
        for name, opt in optimizers.items():
            save_tree(tmp / f"optim-{name}", opt.state_dict())
        for rank, rng in enumerate(rngs):
            save_tree(tmp / f"rng-{rank}", rng)
        write_json(tmp / "progress.json", progress)  # last: marks a complete state
    for old in list_states(run_dir)[:-1]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def list_states(run_dir: str | os.PathLike) -> list[Path]:
    """Complete resumable states under ``run_dir/state`` ordered by step."""
    return list_complete(Path(run_dir) / "state", _STEP_RE, "progress.json", key=int)


def load_state(
    state_dir: Path,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    rank: int,
    world: int,
) -> dict:
    """Restore modules and optimisers in place; returns progress with this rank's RNG state
    under ``"rng"`` (applied by the caller at the very end, after anything that draws)."""
    progress = json.loads((state_dir / "progress.json").read_text())
    if progress["world"] != world:
        raise StateError(
            f"{state_dir} was saved by {progress['world']} processes, resuming with "
            f"{world}; exact resume needs the same process count"
        )
    for name, module in modules.items():
        module.load_state_dict(load_tensors(state_dir / f"{name}.safetensors"))
    for name, opt in optimizers.items():
        opt.load_state_dict(load_tree(state_dir / f"optim-{name}"))
    progress["rng"] = load_tree(state_dir / f"rng-{rank}")
    return progress


def init_weights(source: str | os.PathLike, family: Any, modules: dict[str, torch.nn.Module]) -> str:
    """``--init-from``: copy weights (no optimiser state, no progress) from a snapshot, a run
    dir (its latest state, else its latest snapshot) or a state dir into ``modules``. A module
    the source lacks but whose EMA copy it has starts from that copy (an inference snapshot
    holds only EMA weights); others keep their fresh initialisation. Returns a log line."""
    from langfree.checkpoint import SnapshotError, list_snapshots, read_manifest

    path = Path(source)
    if (path / "progress.json").is_file():
        folder = path
    elif list_states(path):
        folder = list_states(path)[-1]
    elif (path / "manifest.json").is_file():
        read_manifest(path)
        folder = path
    elif list_snapshots(path):
        folder = list_snapshots(path)[-1]
    else:
        raise StateError(f"--init-from {source}: not a snapshot, a state directory nor a run "
                         "directory with snapshots/ or state/")
    found = {p.name.removesuffix(".safetensors") for p in folder.glob("*.safetensors")}
    loaded, from_ema, fresh = [], [], []
    ema_of = dict(family.ema_pairs())
    for name, module in modules.items():
        source_name = name if name in found else ema_of.get(name)
        if source_name not in found:
            fresh.append(name)
            continue
        try:
            module.load_state_dict(load_tensors(folder / f"{source_name}.safetensors"))
        except RuntimeError as exc:
            raise SnapshotError(f"--init-from {folder}: module {name!r} does not fit this "
                                f"config ({str(exc).splitlines()[0]}); use the architecture the "
                                "source was trained with") from None
        (loaded if source_name == name else from_ema).append(name)
    if not loaded and not from_ema:
        raise StateError(f"--init-from {folder}: none of the modules {sorted(modules)} are there")
    line = f"initialised from {folder}: {', '.join(loaded)}"
    if from_ema:
        line += f"; from the EMA copy: {', '.join(from_ema)}"
    if fresh:
        line += f"; fresh: {', '.join(fresh)}"
    return line


# ---------------------------------------------------------------- run directories


def _run_dirs(outdir: Path) -> list[tuple[int, Path]]:
    runs = []
    for p in outdir.iterdir() if outdir.is_dir() else []:
        m = re.match(r"^(\d{5})-", p.name)
        if m and p.is_dir():
            runs.append((int(m.group(1)), p))
    return sorted(runs)


def new_run_dir(outdir: str | os.PathLike, desc: str) -> Path:
    """outdir/NNNNN-desc with NNNNN one above the highest existing run id (StyleGAN2 style)."""
    runs = _run_dirs(Path(outdir))
    run_id = runs[-1][0] + 1 if runs else 0
    return Path(outdir) / f"{run_id:05d}-{desc}"


def resolve_resume(resume: str, outdir: str | os.PathLike) -> tuple[Path, Path]:
    """'latest' | run dir | state dir -> (run_dir, state_dir)."""
    if resume == "latest":
        for _, run in reversed(_run_dirs(Path(outdir))):
            if list_states(run):
                return run, list_states(run)[-1]
        raise StateError(
            f"--resume latest: no run with saved state in {outdir}; "
            "start a new run without --resume"
        )
    path = Path(resume)
    if (path / "progress.json").is_file():
        return path.parent.parent, path
    if list_states(path):
        return path, list_states(path)[-1]
    raise StateError(
        f"--resume {resume}: not a run directory with state/step-* nor a state "
        "directory; pass 'latest' or a run directory"
    )
