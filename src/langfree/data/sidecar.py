"""One mechanism for every tensor precomputed from an archive (a sidecar file beside it).

Encoder embeddings, VAE latents, VQ codes: each is computed once per (archive, producer) and
stored next to the archive as ``DATA.<kind>-<fingerprint>.safetensors``. The fingerprint names
what computes it (a producer's weights and settings), the archive digest (zip member names,
sizes and CRCs) what it was computed from: a sidecar whose stamps differ is recomputed, one that
matches is reused. Computation runs in chunks of images kept in ``<sidecar>.partial/``, so an
interrupted run loses at most one chunk; the sidecar itself appears atomically at the end.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from langfree.io import write_bytes

VERSION = 1
CHUNK_IMAGES = 4096  # images per resumable chunk

# (archive, start, stop, bar) -> {name: tensor with one row per image (or per caption)}
ChunkFn = Callable[..., dict[str, torch.Tensor]]


def archive_digest(archive_path: str | os.PathLike) -> str:
    """Content digest of a zip from its central directory (names, sizes, CRC-32s): cheap, and it
    changes when any image or dataset.json changes."""
    h = hashlib.sha256()
    with zipfile.ZipFile(archive_path) as z:
        for info in sorted(z.infolist(), key=lambda i: i.filename):
            h.update(f"{info.filename}:{info.file_size}:{info.CRC};".encode())
    return h.hexdigest()[:16]


def tensor_digest(tensors: dict[str, torch.Tensor] | torch.nn.Module, extra: str = "") -> str:
    """16 hex digits of a state dict's content (names, shapes, values) plus ``extra`` settings:
    the fingerprint of a producer's weights."""
    state = tensors.state_dict() if isinstance(tensors, torch.nn.Module) else tensors
    h = hashlib.sha256(extra.encode())
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Producer:
    """What a family declares for a precomputed need (``Family.producers()``).

    kind: the sidecar tag and the need it serves ("latents", "image_codes")
    fingerprint: names what computes it (e.g. ``tensor_digest(vae, settings)``)
    encode: uint8 images [B, 3, H, W] -> {field: [B, ...] tensor}; the fields reach the batch
        under these names (e.g. ``latents_mean``, ``latents_std``)
    batch_size: images per encode call
    """

    kind: str
    fingerprint: str
    encode: Callable[[torch.Tensor], dict[str, torch.Tensor]]
    batch_size: int = 64


def sidecar_path(archive_path: str | os.PathLike, kind: str, fingerprint: str) -> Path:
    archive_path = Path(archive_path)
    return archive_path.with_name(f"{archive_path.stem}.{kind}-{fingerprint}.safetensors")


def is_valid(path: Path, kind: str, fingerprint: str, digest: str) -> bool:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (OSError, SafetensorError):  # unreadable or truncated: recompute
        return False
    return (meta.get("format") == f"langfree-{kind}" and meta.get("version") == str(VERSION)
            and meta.get("fingerprint") == fingerprint and meta.get("archive_digest") == digest)


def build(archive, kind: str, fingerprint: str, chunk: ChunkFn, *, chunk_images: int = CHUNK_IMAGES,
          progress: bool | None = None, finish: Callable[[dict], dict] | None = None,
          meta: dict[str, str] | None = None) -> Path:
    """Compute (or reuse) the ``kind`` sidecar of ``archive`` (an ImageArchive); returns its path.

    ``chunk(archive, start, stop, bar)`` computes images ``start:stop``; chunks are concatenated
    along dim 0 per field, then ``finish(tensors)`` may add fields (e.g. offsets)."""
    digest = archive_digest(archive.path)
    dest = sidecar_path(archive.path, kind, fingerprint)
    if dest.is_file() and is_valid(dest, kind, fingerprint, digest):
        return dest
    if chunk_images < 1:
        raise ValueError(f"chunk_images must be >= 1 (got {chunk_images})")
    partial = dest.with_name(dest.name + ".partial")
    remove_stale_partials(archive.path, kind, keep=partial)
    stamp = {"fingerprint": fingerprint, "archive_digest": digest}
    if partial.is_dir() and _read_json(partial / "stamp.json") != stamp:
        shutil.rmtree(partial)  # chunks of another version of the archive: start over
    partial.mkdir(exist_ok=True)
    write_bytes(partial / "stamp.json", json.dumps(stamp).encode())
    try:
        chunks = _chunks(archive, kind, chunk, partial, chunk_images, progress)
    except BaseException:  # a failure (or Ctrl-C) before any chunk completed leaves nothing
        if not any(partial.glob("images-*.safetensors")):
            shutil.rmtree(partial, ignore_errors=True)
        raise
    tensors = {k: torch.cat([c[k] for c in chunks]).contiguous() for k in chunks[0]} if chunks else {}
    if finish is not None:
        tensors = finish(tensors)
    metadata = {"format": f"langfree-{kind}", "version": str(VERSION), "fingerprint": fingerprint,
                "archive_digest": digest, "count": str(len(archive)), **(meta or {})}
    save_atomic(tensors, dest, metadata=metadata)
    shutil.rmtree(partial, ignore_errors=True)
    return dest


def remove_stale_partials(archive_path: str | os.PathLike, kind: str, keep: Path | None = None) -> list[Path]:
    """Remove the ``<archive>.<kind>-*.safetensors.partial/`` folders of interrupted builds
    with another fingerprint (another encoder, VAE, settings) than ``keep``: only the build
    being resumed keeps its chunks, so leftovers never accumulate beside the user's data."""
    archive_path = Path(archive_path)
    removed = []
    pattern = f"{glob.escape(archive_path.stem)}.{kind}-*.safetensors.partial"
    for folder in archive_path.parent.glob(pattern):
        if folder.is_dir() and folder != keep:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _chunks(archive, kind: str, chunk: ChunkFn, partial: Path, chunk_images: int,
            progress: bool | None) -> list[dict]:
    """Every chunk, reusing the ones a previous (interrupted) run saved in ``partial``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from tqdm.auto import tqdm

    n, out = len(archive), []
    terminal = sys.stderr.isatty()
    show = terminal if progress is None else progress
    # a bar on a terminal; redirected, one plain line per chunk instead of carriage returns
    lines = show and not terminal
    with tqdm(total=n, desc=f"{kind} {archive.path.name}", unit="img",
              disable=not (show and terminal), file=sys.stderr) as bar:
        for start in range(0, n, chunk_images):
            stop = min(start + chunk_images, n)
            chunk_file = partial / f"images-{start:09d}-{stop:09d}.safetensors"
            if chunk_file.is_file():
                try:
                    out.append(load_file(str(chunk_file)))
                    bar.update(stop - start)
                    continue
                except (OSError, SafetensorError):  # a damaged chunk is recomputed
                    chunk_file.unlink()
            part = {k: v.contiguous() for k, v in chunk(archive, start, stop, bar).items()}
            partial.mkdir(exist_ok=True)  # another process finishing first may have removed it
            save_atomic(part, chunk_file)
            out.append(part)
            if lines:
                print(f"{kind} {archive.path.name}: {stop}/{n} images", file=sys.stderr, flush=True)
    return out


def load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    return tensors, meta


@torch.no_grad()
def produce(archive, producer: Producer, progress: bool | None = None) -> dict[str, torch.Tensor]:
    """The producer's fields for every image of ``archive``, computed once and reused."""

    def chunk(arch, start, stop, bar):
        parts: dict[str, list[torch.Tensor]] = {}
        for s in range(start, stop, producer.batch_size):
            idx = range(s, min(s + producer.batch_size, stop))
            for k, v in producer.encode(arch.images(idx)).items():
                v = v.detach().cpu()  # integer fields (codes, ids) keep their dtype
                parts.setdefault(k, []).append(v.float() if v.is_floating_point() else v)
            bar.update(len(idx))
        return {k: torch.cat(v) for k, v in parts.items()}

    path = build(archive, producer.kind, producer.fingerprint, chunk, progress=progress)
    return load(path)[0]


def save_atomic(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    from safetensors.torch import save

    write_bytes(path, save(tensors, metadata=metadata))


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
