"""Prompts (or reference images) + seeds -> images, for any family with ``sample``.

Each condition is a CLIP-space embedding from the snapshot's encoder: ``encode_text(prompt)``
for a prompt, ``encode_image(reference)`` for image variation (LAFITE trains on image features,
so a reference image's feature is a valid condition). Image (row r, column s) depends only on
condition r and seed s.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from langfree.io import atomic_write, write_json


def parse_seeds(text: str) -> list[int]:
    """'0-15' / '1,4,7-9' -> list of ints (ranges inclusive)."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError(f"seeds {text!r}: expected numbers and ranges like 0-15 or 1,4,7-9")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise ValueError(f"seeds {text!r}: range {part} runs backwards")
        seeds.extend(range(lo, hi + 1))
    return seeds


def load_reference(path: str | os.PathLike) -> torch.Tensor:
    """An image file -> [1, 3, H, W] float in [-1, 1] (RGB)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            pixels = np.array(img.convert("RGB"))
    except (FileNotFoundError, OSError) as exc:
        raise ValueError(f"--image {path}: cannot read it as an image ({exc})") from None
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1


@dataclass
class Conditions:
    embeddings: torch.Tensor      # [R, D] unit
    labels: list[str]             # one per row


def build_conditions(encoder, prompts: list[str], images: list[str | os.PathLike]) -> Conditions:
    if encoder is None:
        raise ValueError("this snapshot records no encoder; pass --encoder SPEC to turn prompts "
                         "into conditions")
    if not prompts and not images:
        raise ValueError("nothing to condition on: pass --prompt TEXT and/or --image REF.png")
    rows, labels = [], []
    with torch.no_grad():
        if prompts:
            rows.append(encoder.encode_text(list(prompts)).float().cpu())
            labels.extend(prompts)
        for path in images:
            rows.append(encoder.encode_image(load_reference(path)).float().cpu())
            labels.append(f"image:{Path(path).name}")
    emb = torch.nn.functional.normalize(torch.cat(rows), dim=-1)
    return Conditions(emb, labels)


def generate_grid(family, conditions: Conditions, seeds: list[int], **sample_kwargs) -> torch.Tensor:
    """[R, S, 3, H, W] in [-1, 1]: row r = condition r, column s = seed s."""
    R, S = len(conditions.labels), len(seeds)
    cond = conditions.embeddings.repeat_interleave(S, dim=0)               # [R·S, D]
    images = family.sample(cond, list(seeds) * R, **sample_kwargs)        # [R·S, 3, H, W]
    return images.view(R, S, *images.shape[1:])


def _to_uint8(img: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [-1, 1] -> [H, W, 3] uint8."""
    return ((img.float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp))


def write_outputs(images: torch.Tensor, conditions: Conditions, seeds: list[int],
                  outdir: str | os.PathLike) -> list[Path]:
    """One PNG per (row, seed) + grid.png (rows = conditions, columns = seeds) + prompts.json."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    R, S, _, H, W = images.shape
    written = []
    grid = np.zeros((R * H, S * W, 3), dtype=np.uint8)
    for r in range(R):
        for s, seed in enumerate(seeds):
            pixels = _to_uint8(images[r, s])
            grid[r * H:(r + 1) * H, s * W:(s + 1) * W] = pixels
            path = outdir / f"row{r:02d}-seed{seed:04d}.png"
            _save_png(pixels, path)
            written.append(path)
    _save_png(grid, outdir / "grid.png")
    index = {"rows": conditions.labels, "seeds": list(seeds),
             "files": [[f"row{r:02d}-seed{seed:04d}.png" for seed in seeds] for r in range(R)]}
    write_json(outdir / "prompts.json", index, indent=1)
    return written + [outdir / "grid.png"]
