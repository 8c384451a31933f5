"""Encoder specs -> encoders, through a small registry of resolvers.

A resolver is ``(accepts(spec) -> bool, "module:loader")``; the first that accepts a spec loads
it. Loaders are imported on use, so ``open_clip`` is only imported for open_clip specs, and the
adapters (clip.py, small_clip.py) never import each other's loaders.

  open_clip:MODEL/TAG, open_clip:MODEL@/path/weights   -> encoders.clip (OpenClipEncoder)
  DIR with encoder.json (``langfree encoder train``)   -> encoders.small_clip
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import torch

from langfree.encoders.base import ENCODER_JSON, SPEC_PREFIX, EncoderUnavailable

WHAT_TO_PASS = ("pass --encoder open_clip:MODEL/TAG (e.g. open_clip:ViT-B-32/openai, weights in "
                "the Hugging Face cache), open_clip:MODEL@/path/to/weights, or a directory "
                "written by 'langfree encoder train'")

RESOLVERS: list[tuple[Callable[[str], bool], str]] = [
    (lambda spec: spec.startswith(SPEC_PREFIX), "langfree.encoders.clip:load_open_clip_spec"),
    (lambda spec: (Path(spec) / ENCODER_JSON).is_file(), "langfree.encoders.small_clip:load_small_clip"),
]


def load_encoder(spec: str, device: torch.device | str = "cpu"):
    """Build the encoder a spec names; raises EncoderUnavailable saying what to pass."""
    if not isinstance(spec, str) or not spec.strip():
        raise EncoderUnavailable(f"empty encoder spec; {WHAT_TO_PASS}")
    spec = spec.strip()
    for accepts, target in RESOLVERS:
        if accepts(spec):
            module, _, attr = target.partition(":")
            return getattr(importlib.import_module(module), attr)(spec).to(device)
    if Path(spec).exists():
        raise EncoderUnavailable(
            f"encoder spec {spec!r} is a path but not a langfree encoder directory (no "
            f"{ENCODER_JSON}); for an open_clip checkpoint file pass 'open_clip:MODEL@{spec}'")
    raise EncoderUnavailable(
        f"unknown encoder spec {spec!r}: expected 'open_clip:MODEL/TAG' (e.g. "
        "open_clip:ViT-B-32/openai), 'open_clip:MODEL@/path/weights', or a directory written by "
        "'langfree encoder train'")
