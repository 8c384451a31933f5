"""Decode any image file into a square RGB uint8 array, correctly, or say why it cannot be used.

Used by the dataset tool's worker processes; numpy + PIL only (no torch), so workers start fast.
Conversions that naive ``Image.convert("RGB")`` gets wrong are handled explicitly:
16-bit grayscale (PIL would clip everything above 255 to white), transparency (composited on
white, not on black garbage), EXIF orientation (phone photos come out rotated otherwise).
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

TRANSFORMS = ("center-crop", "center-crop-wide", "stretch")
_EXIF_ORIENTATION = 0x0112
_SWAPS_SIDES = (5, 6, 7, 8)  # EXIF orientations that rotate by 90 degrees


class SkipImage(Exception):
    """This file cannot become a training image; ``reason`` is the summary category."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB with values mapped correctly (see module docstring)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if im.mode == "F":
            scale = 255.0 if a.max(initial=0.0) <= 1.0 else 1.0
        else:  # 32-bit "I" holding 8-bit values stays as is; 16-bit data is scaled to 8 bits
            scale = 1.0 if im.mode == "I" and a.max(initial=0) <= 255 else 255.0 / 65535.0
        gray = np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    has_alpha = "A" in im.getbands() or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if im.mode == "RGB":
        return im
    try:
        return im.convert("RGB")
    except ValueError as e:
        raise SkipImage("unsupported image mode", f"{im.mode} ({e})") from e


def _draft_size(size: tuple[int, int], resolution: int) -> tuple[int, int]:
    """Smallest size keeping the shorter side >= 2R: JPEG can then decode at 1/2..1/8 scale.

    Decoding at reduced scale is 3-10x faster for photos much larger than R; 2R keeps the final
    LANCZOS downscale as sharp as from the full image.
    """
    w, h = size
    scale = min(1.0, 2 * resolution / min(w, h))
    return max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block must not cost the image
        return 1


def open_image(data: bytes, resolution: int, min_size: int | None = None,
               notes: list[str] | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Bytes -> (upright RGB image, original upright (w, h)). Raises SkipImage.

    Problems that do not cost the image (a broken EXIF rotation) are appended to ``notes``.
    """
    if not data:
        raise SkipImage("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning etc: we decide below
            im = Image.open(io.BytesIO(data))
            orientation = _orientation(im)
            w, h = im.size
            if orientation in _SWAPS_SIDES:
                w, h = h, w
            if min_size is not None and min(w, h) < min_size:
                raise SkipImage("smaller than --min-size", f"{w}x{h} < {min_size} px")
            if im.format == "JPEG":
                im.draft(im.mode, _draft_size(im.size, resolution))
            im.load()
    except SkipImage:
        raise
    except UnidentifiedImageError as e:
        raise SkipImage("not an image", "format not recognised") from e
    except Image.DecompressionBombError as e:
        raise SkipImage("too large", str(e)) from e
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as e:
        raise SkipImage("corrupt or truncated image", str(e) or type(e).__name__) from e
    if orientation != 1:
        try:
            im = ImageOps.exif_transpose(im)
        except Exception as e:  # noqa: BLE001 - a broken EXIF block must not cost the image
            if notes is not None:
                notes.append(f"EXIF orientation {orientation} not applied ({e})")
    return to_rgb(im), (w, h)


def fit(im: Image.Image, resolution: int, transform: str = "center-crop") -> np.ndarray:
    """RGB image -> uint8 [R, R, 3] with the dataset tool's transforms (StyleGAN2-ADA meaning).

    center-crop: largest centred square; center-crop-wide: centred 2:1 crop scaled to R x R/2 and
    padded with black above and below; stretch: resize ignoring the aspect ratio.
    """
    R = resolution
    w, h = im.size
    # reducing_gap: a cheap integer box reduction first, then LANCZOS for the last factor <= 3.
    resize = {"resample": Image.Resampling.LANCZOS, "reducing_gap": 3.0}
    if transform == "center-crop":
        s = min(w, h)
        box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
        return np.asarray(im.resize((R, R), box=box, **resize))
    if transform == "stretch":
        return np.asarray(im.resize((R, R), **resize))
    if transform == "center-crop-wide":
        cw, ch = (2 * h, h) if w > 2 * h else (w, w / 2)
        box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
        strip = im.resize((R, R // 2), box=box, **resize)
        canvas = Image.new("RGB", (R, R))
        canvas.paste(strip, (0, (R - R // 2) // 2))
        return np.asarray(canvas)
    raise ValueError(f"unknown transform {transform!r}; choose one of {', '.join(TRANSFORMS)}")


def decode_caption_file(data: bytes) -> tuple[list[str], str | None]:
    """Caption file bytes -> (one caption per non-empty line, warning or None).

    UTF-8 (with or without BOM) is expected; anything else is decoded as Latin-1 (every byte is
    valid there, so the image and its captions are kept) and reported.
    """
    warning = None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
        warning = "captions are not UTF-8; decoded as Latin-1"
    return [line.strip() for line in text.splitlines() if line.strip()], warning
