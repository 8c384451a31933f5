"""Tiny offline fixtures: a random-weight SD-layout base pipeline and drawn concept images.

Used by tests and smoke runs (seconds on a CPU); nothing here is trained.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from langfree.families.sd.config import PRESETS, SDConfig


def write_tiny_base(dirpath: str | Path, cfg: SDConfig | None = None, seed: int = 0) -> Path:
    """A random-initialised SD pipeline directory (preset "test": 16 px, 4x4x4 latents)."""
    from langfree.families.sd.pipeline import build_components, save_pipeline

    return save_pipeline(build_components(cfg or PRESETS["test"], seed), dirpath)


def write_shape_images(dirpath: str | Path, n: int = 3, size: int = 16, colour=(220, 40, 40),
                       seed: int = 0) -> Path:
    """``n`` PNGs of a filled square of ``colour`` at random places on grey (a toy concept)."""
    from PIL import Image

    dirpath = Path(dirpath)
    dirpath.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = np.full((size, size, 3), 128, np.uint8)
        s = size // 2
        y, x = rng.integers(0, size - s + 1, 2)
        img[y:y + s, x:x + s] = colour
        Image.fromarray(img).save(dirpath / f"img_{i:02d}.png")
    return dirpath
