"""Joint text-image encoders (the CLIP space every family conditions on).

``load_encoder(spec)`` builds one from a spec string (see ``langfree.encoders.clip``); the small
CLIP trainer for captioned archives is ``train_small_clip`` (``langfree.encoders.small_clip``).
open_clip is imported only when an encoder is actually built.
"""

from langfree.encoders.base import TextImageEncoder
from langfree.encoders.clip import EncoderUnavailable, OpenClipEncoder, load_encoder
from langfree.encoders.small_clip import (
    load_small_clip, save_random_small_clip, save_small_clip, small_clip_config, train_small_clip,
)

__all__ = [
    "EncoderUnavailable", "OpenClipEncoder", "TextImageEncoder", "load_encoder", "load_small_clip",
    "save_random_small_clip", "save_small_clip", "small_clip_config", "train_small_clip",
]
