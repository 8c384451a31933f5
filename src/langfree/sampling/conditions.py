"""What ``Family.sample`` conditions on, and the sampling options every caller passes through.

``Conditions`` has one row per image: the prompt text (families that tokenise it themselves read
this), the encoder embedding of the row (families conditioned in CLIP space read this: the
prompt's text embedding, or a reference image's image embedding for image variation), and the
reference image itself where there is one. Preview grids, ``langfree generate``, ``langfree
eval``, the metrics and the quickstart all build Conditions here and pass a family's
``SampleOptions`` (a frozen dataclass) parsed from ``key=value`` strings, so a result can always
say exactly how it was sampled.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass
class Conditions:
    """Rows of conditions; every field that is not None has one entry per row.

    prompts: the text of each row (None for a reference-image row)
    embeddings: [R, D] float32, L2-normalised (text embedding of the prompt, or image embedding
        of the reference image), or None when no encoder was available
    images: [R, 3, H, W] reference images in [-1, 1] (only when every row has one), or None
    negative_prompts: one per row, or None (families whose guidance uses one read it)
    labels: a short name per row for file names and grids
    """

    prompts: list[str | None]
    embeddings: torch.Tensor | None = None
    images: torch.Tensor | None = None
    negative_prompts: list[str] | None = None
    labels: list[str] | None = None

    def __post_init__(self) -> None:
        n = len(self.prompts)
        for name in ("embeddings", "images", "negative_prompts", "labels"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"Conditions.{name} has {len(value)} rows, prompts has {n}")
        if self.labels is None:
            self.labels = [p if p is not None else f"row {i}" for i, p in enumerate(self.prompts)]

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, index: list[int] | range) -> Conditions:
        """The rows ``index`` (repeats allowed), as a new Conditions."""
        idx = list(index)
        t = torch.tensor(idx, dtype=torch.long)
        return Conditions(
            prompts=[self.prompts[i] for i in idx],
            embeddings=self.embeddings[t] if self.embeddings is not None else None,
            images=self.images[t] if self.images is not None else None,
            negative_prompts=([self.negative_prompts[i] for i in idx]
                              if self.negative_prompts is not None else None),
            labels=[self.labels[i] for i in idx],
        )

    def repeat_each(self, n: int) -> Conditions:
        """Row r repeated n times in a row: [r0]*n + [r1]*n + ... (a grid's rows x seeds)."""
        return self.select([r for r in range(len(self)) for _ in range(n)])

    def to(self, device: torch.device | str) -> Conditions:
        return dataclasses.replace(
            self,
            embeddings=self.embeddings.to(device) if self.embeddings is not None else None,
            images=self.images.to(device) if self.images is not None else None,
        )

    def require_embeddings(self, family: str) -> torch.Tensor:
        if self.embeddings is None:
            raise ValueError(f"{family} conditions on encoder embeddings, but none were given: "
                             "pass --encoder SPEC (or use a snapshot that records its encoder)")
        return self.embeddings

    def require_prompts(self, family: str) -> list[str]:
        if any(p is None for p in self.prompts):
            raise ValueError(f"{family} conditions on prompt text; reference images cannot be "
                             "used as conditions for it (pass --prompt TEXT)")
        return [str(p) for p in self.prompts]


def load_reference(path: str | os.PathLike) -> torch.Tensor:
    """An image file -> [1, 3, H, W] float in [-1, 1] (RGB)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            pixels = np.array(img.convert("RGB"))
    except (FileNotFoundError, OSError) as exc:
        raise ValueError(f"--image {path}: cannot read it as an image ({exc})") from None
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1


@torch.no_grad()
def encode_texts(encoder: Any, texts: list[str], batch: int = 256) -> torch.Tensor:
    """[N, D] float32 CPU, L2-normalised (unique texts encoded once)."""
    if not texts:
        return torch.zeros(0, encoder.embed_dim)
    unique = sorted(set(texts))
    table = torch.cat([encoder.encode_text(unique[i:i + batch]).float().cpu()
                       for i in range(0, len(unique), batch)])
    row = {t: r for r, t in enumerate(unique)}
    return torch.nn.functional.normalize(table[[row[t] for t in texts]], dim=-1)


@torch.no_grad()
def build_conditions(encoder: Any, prompts: list[str] = (), images: list[Any] = (),
                     negative_prompt: str | None = None, require_encoder: bool = False) -> Conditions:
    """Prompts (text rows) and reference images (paths or [1, 3, H, W] tensors) -> Conditions,
    with embeddings when an encoder is given. ``require_encoder``: fail without one."""
    prompts, images = list(prompts), list(images)
    if not prompts and not images:
        raise ValueError("nothing to condition on: pass --prompt TEXT and/or --image REF.png")
    if encoder is None and (require_encoder or images):
        raise ValueError("this snapshot records no encoder; pass --encoder SPEC to turn prompts "
                         "and reference images into conditions")
    rows_text: list[str | None] = list(prompts)
    labels = list(prompts)
    refs = []
    for item in images:
        tensor = load_reference(item) if isinstance(item, (str, os.PathLike)) else item
        refs.append(tensor)
        rows_text.append(None)
        labels.append(f"image:{Path(item).name}" if isinstance(item, (str, os.PathLike))
                      else f"image {len(refs) - 1}")
    emb = None
    if encoder is not None:
        parts = [encode_texts(encoder, prompts)] if prompts else []
        parts += [encoder.encode_image(r).float().cpu() for r in refs]
        emb = torch.nn.functional.normalize(torch.cat(parts), dim=-1)
    negatives = [negative_prompt] * len(rows_text) if negative_prompt else None
    same_size = refs and not prompts and len({tuple(r.shape) for r in refs}) == 1
    return Conditions(prompts=rows_text, embeddings=emb,
                      images=torch.cat(refs) if same_size else None,
                      negative_prompts=negatives, labels=labels)


# ---------------------------------------------------------------------- sampling options
def sample_options_class(family: Any) -> type:
    cls = getattr(family, "SampleOptions", None)
    if cls is None or not dataclasses.is_dataclass(cls):
        raise TypeError(f"family {getattr(family, 'name', family)!r} declares no SampleOptions "
                        "dataclass")
    return cls


def parse_sample_options(family: Any, items: list[str] | dict | None = None) -> Any:
    """``["steps=40", "guidance_scale=1.5"]`` (or a dict) -> the family's SampleOptions,
    validated; an unknown key is an error naming the valid ones."""
    from langfree.config import ConfigError, apply_overrides, from_dict, to_dict

    cls = sample_options_class(family)
    if isinstance(items, dict):
        options = from_dict(cls, items)
    else:
        bad = [t for t in items or [] if "=" not in t]
        if bad:
            raise ConfigError(f"--sample {bad[0]!r}: expected KEY=VALUE; options of "
                              f"{family.name}: {', '.join(f.name for f in dataclasses.fields(cls))}")
        options = apply_overrides(cls, to_dict(cls()), list(items or []))
    check_ranges(options)
    return options


def check_ranges(options: Any) -> None:
    """Enforce the ``min`` / ``max`` / ``choices`` metadata of SampleOptions fields."""
    from langfree.config import ConfigError

    for f in dataclasses.fields(options):
        value, meta = getattr(options, f.name), f.metadata
        if "choices" in meta and value not in meta["choices"]:
            raise ConfigError(f"sample option {f.name}={value!r}: choose one of "
                              f"{', '.join(map(str, meta['choices']))}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if "min" in meta and value < meta["min"] or "max" in meta and value > meta["max"]:
                raise ConfigError(f"sample option {f.name}={value}: must be in "
                                  f"[{meta.get('min', '-inf')}, {meta.get('max', 'inf')}]")


def options_dict(options: Any) -> dict[str, Any]:
    from langfree.config import to_dict

    return to_dict(options) if options is not None else {}
