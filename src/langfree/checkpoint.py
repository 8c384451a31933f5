"""Inference snapshots: data only (safetensors + JSON), never pickle.

A snapshot directory holds:
  - ``manifest.json``: format, version, family name, kimg, langfree version, module names, extra
  - ``config.json``: ``{"family": name, "config": <family config dict>, "encoder": spec | null}``
    (enough to rebuild the family through ``langfree.families.registry``)
  - ``<module>.safetensors``: one file per entry of ``family.modules()``
  - ``grid.png`` (optional): the preview grid at that point of training

Every write is atomic: files go to a hidden temp directory beside the target, which is renamed
into place only when complete, so a crash mid-save never leaves a half snapshot under the real
name (the previous snapshots stay loadable).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from langfree import __version__
from langfree.io import atomic_write, write_json

FORMAT = "langfree-snapshot"
FORMAT_VERSION = 2  # 2: references, assets, export, sample_options; 1 still loads
_SNAPSHOT_RE = re.compile(r"^snapshot-(\d+(?:\.\d+)?)$")


class SnapshotError(ValueError):
    """A snapshot path or file is missing or malformed; the message says what to do."""


# ---------------------------------------------------------------- atomic file helpers


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp directory; on success it replaces ``target`` (rename is atomic).

    An existing ``target`` is moved aside first and deleted after the new one is in place; on
    an exception the temp directory is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    if target.exists():
        os.replace(target, old)  # rename() cannot replace a non-empty directory
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    sweep_leftovers(target.parent)


_LEFTOVER_RE = re.compile(r"^\.(.+)\.(tmp|old)-(\d+)$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def sweep_leftovers(root: Path) -> list[Path]:
    """Remove what a killed writer left in ``root``: its temp directories (``.NAME.tmp-PID``,
    never renamed into place) and its moved-aside ``.NAME.old-PID`` once ``NAME`` exists again
    (an ``.old`` whose target is missing is the only good copy and stays). Only dead PIDs are
    touched, so a live writer's temp directory is safe. Returns what was removed."""
    removed = []
    for p in root.iterdir() if root.is_dir() else []:
        m = _LEFTOVER_RE.match(p.name)
        if not m or int(m.group(3)) == os.getpid() or _alive(int(m.group(3))):
            continue
        if m.group(2) == "old" and not (root / m.group(1)).exists():
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> None:
    """safetensors file of CPU copies. Cloning breaks shared/tied storage, which safetensors
    refuses to save (tied weights then load twice with the same value)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().to("cpu").clone().contiguous() for k, v in tensors.items()}, str(path))


def load_tensors(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise SnapshotError(f"missing tensor file {path}; the snapshot or state is incomplete")
    return load_file(str(path), device=str(device))


def save_image_grid(path: str | os.PathLike, images: torch.Tensor, nrow: int | None = None) -> None:
    """[B, 3, H, W] in [-1, 1] -> one PNG grid (atomic)."""
    import math

    from PIL import Image

    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"preview must return [B, 3, H, W] images, got shape {tuple(images.shape)}"
        )
    b, _, h, w = images.shape
    cols = nrow or math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    pixels = ((images.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    grid = torch.zeros(3, rows * h, cols * w, dtype=torch.uint8)
    for i in range(b):
        r, c = divmod(i, cols)
        grid[:, r * h : (r + 1) * h, c * w : (c + 1) * w] = pixels[i]
    atomic_write(path, lambda tmp: Image.fromarray(grid.permute(1, 2, 0).numpy()).save(tmp))


# ---------------------------------------------------------------- snapshots


def _config_dict(family: Any) -> dict[str, Any]:
    from langfree.config import to_dict

    encoder = getattr(family, "encoder", None)
    return {
        "family": family.name,
        "config": to_dict(family.config),
        "encoder": getattr(encoder, "spec", None) if encoder is not None else None,
    }


def save_snapshot(
    dirpath: str | os.PathLike,
    family: Any,
    kimg: float,
    extra: dict | None = None,
    grid: torch.Tensor | None = None,
    modules: tuple[str, ...] | None = None,
) -> Path:
    """Write ``family``'s inference snapshot at ``dirpath`` (atomic): the modules it declares
    (``snapshot_modules``, default all but references), its references (spec + digest, not
    copied), its assets (files under ``assets/``), its native export (``export/``) and the
    default sampling options.

    ``grid``: optional [B, 3, H, W] preview images in [-1, 1], saved as grid.png.
    ``modules``: save these modules instead of the declared ones (an imported checkpoint keeps
    its training networks so ``--init-from`` can continue from it; loading reads the declared).
    """
    from langfree.families.base import optional, snapshot_module_names
    from langfree.sampling.conditions import options_dict

    names = tuple(modules) if modules is not None else snapshot_module_names(family)
    modules = family.modules()
    references = optional(family, "references", default={}) or {}
    assets = optional(family, "assets", default={}) or {}
    options_cls = getattr(family, "SampleOptions", None)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "family": family.name,
        "kimg": float(kimg),
        "langfree_version": __version__,
        "modules": sorted(names),
        "references": {k: {"spec": r.spec, "digest": r.digest} for k, r in references.items()},
        "assets": sorted(assets),
        "sample_options": options_dict(options_cls()) if options_cls is not None else {},
        "extra": extra or {},
    }
    with atomic_dir(dirpath) as tmp:
        for name in names:
            save_tensors(tmp / f"{name}.safetensors", modules[name].state_dict())
        if assets:
            (tmp / "assets").mkdir()
            for name, data in assets.items():
                _check_asset_name(name)
                (tmp / "assets" / name).write_bytes(data)
        if hasattr(family, "export"):
            (tmp / "export").mkdir()
            family.export(tmp / "export")
        write_json(tmp / "config.json", _config_dict(family))
        if grid is not None:
            save_image_grid(tmp / "grid.png", grid)
        write_json(tmp / "manifest.json", manifest)  # last: its presence marks completeness
    return Path(dirpath)


def _check_asset_name(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name) or name.startswith("."):
        raise ValueError(f"asset name {name!r}: use a plain file name (letters, digits, ._-)")


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except FileNotFoundError:
        raise SnapshotError(
            f"{path} is not a langfree snapshot (no manifest.json); pass a "
            "snapshot directory or a run directory containing snapshots/"
        ) from None
    if manifest.get("format") != FORMAT:
        raise SnapshotError(
            f"{path}/manifest.json: format {manifest.get('format')!r} is not "
            f"{FORMAT!r}; convert official checkpoints with `langfree convert`"
        )
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise SnapshotError(
            f"{path}: snapshot format version {manifest['format_version']} is "
            f"newer than this langfree ({FORMAT_VERSION}); upgrade langfree"
        )
    return manifest


def list_complete(root: Path, pattern: re.Pattern, marker: str, key=float) -> list[Path]:
    """Directories in ``root`` whose name matches ``pattern`` (group 1 = sort key) and that hold
    ``marker`` (written last, so temp and half-written directories are skipped), in key order."""
    found = []
    for p in root.iterdir() if root.is_dir() else []:
        m = pattern.match(p.name)
        if m and (p / marker).is_file():
            found.append((key(m.group(1)), p))
    return [p for _, p in sorted(found)]


def list_snapshots(run_dir: str | os.PathLike) -> list[Path]:
    """Complete snapshots under ``run_dir/snapshots`` ordered by kimg (temp dirs skipped)."""
    return list_complete(Path(run_dir) / "snapshots", _SNAPSHOT_RE, "manifest.json")


def resolve_snapshot(path_or_rundir: str | os.PathLike) -> Path:
    """A snapshot dir is returned as is; a run dir resolves to its latest snapshot."""
    path = Path(path_or_rundir)
    if (path / "manifest.json").is_file():
        return path
    if not path.exists():
        raise SnapshotError(f"snapshot path {path} does not exist")
    snaps = list_snapshots(path)
    if not snaps:
        raise SnapshotError(
            f"no snapshot found in {path}: pass a snapshot directory (with "
            "manifest.json) or a run directory with snapshots/snapshot-*"
        )
    return snaps[-1]


def _load_encoder(spec: str | None, encoder: Any, device: str | torch.device) -> Any:
    if encoder is None:
        return None
    if isinstance(encoder, str) and encoder != "auto":
        spec = encoder
    elif encoder != "auto":
        return encoder  # an encoder object
    if spec is None:
        return None
    from langfree.encoders import load_encoder

    return load_encoder(spec, device=str(device))


def load_snapshot(
    path: str | os.PathLike, encoder: Any = "auto", device: str | torch.device = "cpu"
) -> Any:
    """Rebuild the family of a snapshot (or of a run dir's latest snapshot) with its weights.

    encoder: "auto" loads the recorded spec; None builds without one; a spec string or an
    encoder object is used as given.
    """
    from langfree.config import from_dict
    from langfree.families.registry import get_family

    path = resolve_snapshot(path)
    manifest = read_manifest(path)
    cfg = json.loads((path / "config.json").read_text())
    cls = get_family(cfg["family"])
    family = cls(
        from_dict(cls.Config, cfg["config"]), _load_encoder(cfg.get("encoder"), encoder, device)
    )
    load_weights(path, manifest, family, device)
    return family


def load_weights(path: Path, manifest: dict, family: Any, device: str | torch.device = "cpu") -> None:
    """Load a snapshot's declared modules, check its references, hand it its assets."""
    from langfree.families.base import optional, snapshot_module_names

    modules = family.modules()
    wanted = snapshot_module_names(family)
    missing = sorted(set(wanted) - set(manifest["modules"]))
    if missing:
        raise SnapshotError(
            f"{path}: modules {missing} of family {manifest['family']!r} are not in the "
            f"snapshot (it holds {manifest['modules']}); it was written by another version"
        )
    # Declared modules must be there; any other module of the family the snapshot holds (a
    # version-1 snapshot, an imported checkpoint that keeps its training networks) loads too.
    extra = [n for n in manifest["modules"] if n in modules and n not in wanted]
    for name in (*wanted, *extra):
        try:
            modules[name].load_state_dict(load_tensors(path / f"{name}.safetensors"))
        except RuntimeError as exc:
            raise SnapshotError(f"{path}/{name}.safetensors does not fit the recorded config: "
                                f"{str(exc).splitlines()[0]}") from None
    for module in modules.values():
        module.to(device)
    recorded = manifest.get("references", {})
    if recorded:  # frozen parts: the family loads them from their recorded specs
        optional(family, "load_references", {k: v["spec"] for k, v in recorded.items()})
    for name, ref in (optional(family, "references", default={}) or {}).items():
        want = recorded.get(name)
        if want is not None and want["digest"] != ref.digest:
            raise SnapshotError(
                f"{path}: reference {name!r} was {want['spec']} (digest {want['digest']}) when "
                f"the snapshot was written, but {ref.spec} now has digest {ref.digest}; pass "
                "the component the model was trained with")
    names = manifest.get("assets", [])
    if names:
        assets = {n: (path / "assets" / n).read_bytes() for n in names}
        optional(family, "load_assets", assets)
