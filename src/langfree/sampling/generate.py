"""Conditions + seeds -> images for any family, and the files ``langfree generate`` writes.

Image (row r, column s) depends only on condition row r, seed s and the sampling options. Every
PNG carries a ``parameters`` text chunk (the A1111 convention): the prompt, an optional
``Negative prompt:`` line, then ``Seed: N, Family: F, Snapshot: PATH, Options: {json}``, which
``read_parameters`` (and ``langfree generate --from-png``) turns back into the same settings.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from langfree.io import atomic_write, write_json
from langfree.sampling.conditions import Conditions, options_dict

PARAMETERS_KEY = "parameters"
_LAST_LINE = re.compile(r"^Seed: (-?\d+), Family: (\S+), Snapshot: (.*), Options: (\{.*\})$")


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
    repeated = sorted(s for s, n in Counter(seeds).items() if n > 1)
    if repeated:  # one file per (row, seed): a repeated seed would overwrite its own image
        raise ValueError(f"--seeds {text!r}: seed {', '.join(map(str, repeated))} given twice; "
                         "each seed makes one image per prompt, list every seed once")
    return seeds


def generate_grid(family: Any, conditions: Conditions, seeds: list[int], options: Any = None,
                  batch: int = 64) -> torch.Tensor:
    """[R, S, 3, H, W] in [-1, 1]: row r = condition r, column s = seed s."""
    return sample_grid(lambda rows, row_seeds: family.sample(rows, row_seeds, options),
                       conditions, seeds, batch)


def sample_grid(sample: Callable[[Conditions, list[int]], torch.Tensor], conditions: Conditions,
                seeds: list[int], batch: int = 64) -> torch.Tensor:
    """``generate_grid`` for any ``sample(conditions, seeds) -> images`` callable: the R·S
    (row, seed) pairs go through ``sample`` ``batch`` at a time, whatever R and S are (so 16 seeds
    of many prompts fill batches of 64), and come back as [R, S, 3, H, W]."""
    R, S = len(conditions), len(seeds)
    rows = conditions.repeat_each(S)                                    # R·S rows
    all_seeds = list(seeds) * R
    out = [sample(rows.select(range(i, min(i + batch, R * S))), all_seeds[i:i + batch])
           for i in range(0, R * S, batch)]
    images = torch.cat(out)                                             # [R·S, 3, H, W]
    return images.view(R, S, *images.shape[1:])


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [-1, 1] -> [H, W, 3] uint8."""
    return ((img.float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


# ---------------------------------------------------------------------- PNG parameters
@dataclass(frozen=True)
class Parameters:
    """What one generated image was made from (the PNG ``parameters`` chunk)."""

    prompt: str | None
    seed: int
    family: str
    snapshot: str
    options: dict[str, Any]
    negative_prompt: str | None = None

    def text(self) -> str:
        lines = [_one_line(self.prompt) if self.prompt is not None else ""]
        if self.negative_prompt:
            lines.append(f"Negative prompt: {_one_line(self.negative_prompt)}")
        lines.append(f"Seed: {self.seed}, Family: {self.family}, Snapshot: {self.snapshot}, "
                     f"Options: {json.dumps(self.options, sort_keys=True)}")
        return "\n".join(lines)

    @classmethod
    def parse(cls, text: str) -> Parameters:
        lines = text.splitlines()
        m = _LAST_LINE.match(lines[-1]) if lines else None
        if m is None:
            raise ValueError("the PNG's parameters chunk was not written by langfree (its last "
                             "line must read 'Seed: N, Family: F, Snapshot: PATH, Options: {...}')")
        negative = None
        body = lines[:-1]
        if body and body[-1].startswith("Negative prompt: "):
            negative = body.pop().removeprefix("Negative prompt: ")
        prompt = "\n".join(body) or None
        return cls(prompt=prompt, seed=int(m.group(1)), family=m.group(2), snapshot=m.group(3),
                   options=json.loads(m.group(4)), negative_prompt=negative)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def save_png(array: np.ndarray, path: str | os.PathLike, parameters: Parameters | None = None) -> None:
    """uint8 [H, W, 3] -> PNG (atomic), with the ``parameters`` text chunk when given."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = None
    if parameters is not None:
        info = PngInfo()
        info.add_text(PARAMETERS_KEY, parameters.text())
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG", pnginfo=info))


def read_parameters(path: str | os.PathLike) -> Parameters:
    """The settings a langfree PNG was generated with."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            text = (getattr(img, "text", None) or {}).get(PARAMETERS_KEY)
    except (FileNotFoundError, OSError) as exc:
        raise ValueError(f"--from-png {path}: cannot read it as an image ({exc})") from None
    if text is None:
        raise ValueError(f"--from-png {path}: the PNG has no '{PARAMETERS_KEY}' text chunk "
                         "(only PNGs written by langfree carry one)")
    return Parameters.parse(text)


def write_outputs(images: torch.Tensor, conditions: Conditions, seeds: list[int],
                  outdir: str | os.PathLike, family: str = "", snapshot: str = "",
                  options: Any = None) -> list[Path]:
    """One PNG per (row, seed) + grid.png (rows = conditions, columns = seeds) + prompts.json,
    each PNG with its ``parameters`` chunk; prompts.json records the sampling options."""
    outdir = Path(outdir)
    created = [d for d in (outdir, *outdir.parents) if not d.exists()]
    outdir.mkdir(parents=True, exist_ok=True)
    new: list[Path] = []
    try:
        return _write_outputs(images, conditions, seeds, outdir, family, snapshot, options, new)
    except OSError:  # full disk, read-only folder: remove this call's files, keep earlier ones
        for path in new:
            path.unlink(missing_ok=True)
        for folder in created:  # innermost first
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise


def _write_outputs(images: torch.Tensor, conditions: Conditions, seeds: list[int], outdir: Path,
                   family: str, snapshot: str, options: Any, new: list[Path]) -> list[Path]:
    """``write_outputs``' files; ``new`` collects the ones that did not exist before."""

    def save(path: Path, write) -> None:
        existed = path.exists()
        write(path)
        if not existed:
            new.append(path)

    R, S, _, H, W = images.shape
    opts = options_dict(options)
    written = []
    grid = np.zeros((R * H, S * W, 3), dtype=np.uint8)
    for r in range(R):
        for s, seed in enumerate(seeds):
            pixels = to_uint8(images[r, s])
            grid[r * H:(r + 1) * H, s * W:(s + 1) * W] = pixels
            path = outdir / f"row{r:02d}-seed{seed:04d}.png"
            negative = conditions.negative_prompts[r] if conditions.negative_prompts else None
            params = Parameters(conditions.prompts[r], int(seed), family, str(snapshot), opts,
                                negative)
            save(path, lambda p, px=pixels, pa=params: save_png(px, p, pa))
            written.append(path)
    save(outdir / "grid.png", lambda p: save_png(grid, p))
    index = {"rows": conditions.labels, "seeds": list(seeds), "family": family,
             "snapshot": str(snapshot), "sample_options": opts,
             "files": [[f"row{r:02d}-seed{seed:04d}.png" for seed in seeds] for r in range(R)]}
    save(outdir / "prompts.json", lambda p: write_json(p, index, indent=1))
    return written + [outdir / "grid.png"]
