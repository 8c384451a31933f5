"""Joint text-image encoders (the CLIP space every family conditions on).

``load_encoder(spec)`` builds one from a spec string (see ``langfree.encoders.clip``); the small
CLIP trainer for captioned archives is ``train_small_clip`` (``langfree.encoders.small_clip``).

Attributes are imported on first use (PEP 562), so the CLI can read the defaults below without
paying for torch and open_clip.
"""

from __future__ import annotations

import importlib

# The small-CLIP recipe: defaults of `langfree encoder train`, `train_small_clip` and the quickstart.
# On 20 000 shapes images at 32 px, 400 steps of 256 pairs reach retrieval_top1 >= 0.95 (measured).
SMALL_CLIP_STEPS = 400
SMALL_CLIP_BATCH = 256
SMALL_CLIP_LR = 2e-3
SMALL_CLIP_EMBED_DIM = 128

_EXPORTS = {
    "TextImageEncoder": "langfree.encoders.base",
    "EncoderUnavailable": "langfree.encoders.base",
    "OpenClipEncoder": "langfree.encoders.clip",
    "load_encoder": "langfree.encoders.registry",
    "load_small_clip": "langfree.encoders.small_clip",
    "save_random_small_clip": "langfree.encoders.small_clip",
    "save_small_clip": "langfree.encoders.small_clip",
    "small_clip_config": "langfree.encoders.small_clip",
    "train_small_clip": "langfree.encoders.small_clip",
}

__all__ = [
    "SMALL_CLIP_BATCH", "SMALL_CLIP_EMBED_DIM", "SMALL_CLIP_LR", "SMALL_CLIP_STEPS", "EncoderUnavailable",
    "OpenClipEncoder", "TextImageEncoder", "load_encoder", "load_small_clip", "save_random_small_clip",
    "save_small_clip", "small_clip_config", "train_small_clip",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'langfree.encoders' has no attribute {name!r}")
