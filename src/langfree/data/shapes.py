"""Shapes: langfree's embedded, captioned toy data set, drawn procedurally (no download).

Each image shows one main object (shape, colour, size, position on a 3x3 grid) on a dark
background, optionally with a smaller second object that does not overlap it. Every attribute is
recognisable at 32 px, so a text-to-image model's output can be scored by an attribute classifier.
Objects are drawn at 4x the resolution and box-filtered down, which anti-aliases the edges.

Determinism: image ``i`` of seed ``s`` depends only on ``numpy.random.SeedSequence([s, i])``, so
any prefix of a set is reproducible and different seeds give different images.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ATTRIBUTES: dict[str, list[str]] = {
    "shape": ["circle", "square", "triangle", "diamond", "star"],
    "color": ["red", "green", "blue", "yellow", "purple", "orange", "white"],
    "size": ["small", "medium", "large"],
    "position": ["top left", "top", "top right", "left", "center", "right",
                 "bottom left", "bottom", "bottom right"],
}

COLORS_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35), "green": (35, 175, 55), "blue": (45, 95, 235),
    "yellow": (240, 225, 40), "purple": (150, 55, 205), "orange": (250, 140, 15),
    "white": (245, 245, 245),
}
# Muted, dark backgrounds: every object colour stands out against all of them.
BACKGROUNDS_RGB: dict[str, tuple[int, int, int]] = {
    "black": (18, 18, 20), "gray": (75, 75, 78), "navy": (20, 28, 62), "brown": (62, 42, 30),
}
# Half-extent of the object's bounding box, as a fraction of the image side.
SIZE_FRACTION = {"small": 0.11, "medium": 0.16, "large": 0.23}
GRID = (0.2, 0.5, 0.8)  # object centres of the 3x3 positions, fraction of the side
POSITION_JITTER = 0.035
COLOR_JITTER = 12        # per channel, objects
BACKGROUND_JITTER = 6    # smaller: a jittered near-black must not turn into a dark colour
SUPERSAMPLE = 4
SECOND_SIZE = "small"
NUM_STYLES = 5

_SIZE_WORDS = {"small": ["small", "little", "tiny"], "medium": ["medium", "medium-sized", "mid-sized"],
               "large": ["large", "big", "huge"]}
_SHAPE_WORDS = {"circle": ["circle", "round shape", "disc"], "square": ["square", "box", "block"],
                "triangle": ["triangle", "triangular shape", "three-sided shape"],
                "diamond": ["diamond", "rhombus", "diamond shape"],
                "star": ["star", "five-pointed star", "star shape"]}
_POS_WORDS = {  # (canonical phrase with preposition, hyphenated synonyms, "corner"-style synonyms)
    "top left": ("at the top left", ["top-left", "upper-left"], ["upper-left corner", "top-left corner"]),
    "top": ("at the top", ["top", "upper"], ["top edge", "top middle"]),
    "top right": ("at the top right", ["top-right", "upper-right"], ["upper-right corner", "top-right corner"]),
    "left": ("on the left", ["left", "left-hand"], ["left side", "left edge"]),
    "center": ("in the center", ["center", "middle"], ["center", "middle of the image"]),
    "right": ("on the right", ["right", "right-hand"], ["right side", "right edge"]),
    "bottom left": ("at the bottom left", ["bottom-left", "lower-left"], ["lower-left corner", "bottom-left corner"]),
    "bottom": ("at the bottom", ["bottom", "lower"], ["bottom edge", "bottom middle"]),
    "bottom right": ("at the bottom right", ["bottom-right", "lower-right"], ["lower-right corner", "bottom-right corner"]),
}


@dataclass
class ShapesData:
    images: np.ndarray            # uint8 [N, H, W, 3]
    captions: list[list[str]]     # NUM_STYLES phrasings per image, canonical first
    attributes: list[dict]        # main object + "background" (+ "second": the second object)


# -- captions --------------------------------------------------------------------------------
def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(attrs: dict, style: int = 0, rng: np.random.Generator | None = None) -> str:
    """One phrasing of ``attrs`` (shape, color, size, position; optional "second" object).

    Style 0 is canonical and never random: "a large red circle at the top left". Other styles
    pick synonyms with ``rng`` (the first synonym when ``rng`` is None).
    """
    def pick(words: list[str]) -> str:
        return words[0] if rng is None else words[int(rng.integers(len(words)))]

    shape, color, size, pos = attrs["shape"], attrs["color"], attrs["size"], attrs["position"]
    at, hyphen, corner = _POS_WORDS[pos]
    style = int(style) % NUM_STYLES
    if style == 0:
        text = f"a {size} {color} {shape} {at}"
    elif style == 1:
        text = f"{color} {shape}, {pick(_SIZE_WORDS[size][1:] + [size])}, {pick(corner)}"
    elif style == 2:
        size_word = pick(_SIZE_WORDS[size])
        text = f"{_article(size_word)} {size_word} {color} {pick(_SHAPE_WORDS[shape])} in the {pick(hyphen)} part"
    elif style == 3:
        text = f"{_article(color)} {color} {pick(_SHAPE_WORDS[shape])} of {size} size, {at}"
    else:
        size_word = pick(_SIZE_WORDS[size])
        text = f"{at}, {_article(size_word)} {size_word} {shape} colored {color}"
        text = text[0].upper() + text[1:]
    second = attrs.get("second")
    if second:
        text += f" and a small {second['color']} {second['shape']} {_POS_WORDS[second['position']][0]}"
    return text


_CANONICAL = re.compile(
    r"^a (?P<size>{s}) (?P<color>{c}) (?P<shape>{h}) (?:at the|on the|in the) (?P<position>{p})"
    r"(?: and a small (?P<c2>{c}) (?P<h2>{h}) (?:at the|on the|in the) (?P<p2>{p}))?$".format(
        s="|".join(ATTRIBUTES["size"]), c="|".join(ATTRIBUTES["color"]),
        h="|".join(ATTRIBUTES["shape"]),
        p="|".join(sorted(ATTRIBUTES["position"], key=len, reverse=True))))


def parse_attributes(text: str) -> dict | None:
    """Attributes of a canonical (style 0) caption, or None when ``text`` is not one."""
    m = _CANONICAL.match(text.strip().lower())
    if m is None:
        return None
    attrs = {k: m.group(k) for k in ("shape", "color", "size", "position")}
    if m.group("c2"):
        attrs["second"] = {"shape": m.group("h2"), "color": m.group("c2"), "size": SECOND_SIZE,
                           "position": m.group("p2")}
    return attrs


def prompt_grid(n: int) -> list[tuple[str, dict]]:
    """``n`` canonical prompts whose attributes cycle through every colour, shape and position.

    Colour, shape and position advance together with co-prime periods (7, 5, 9), so any 7
    consecutive prompts cover all colours, any 5 all shapes, any 9 all positions.
    """
    prompts = []
    for i in range(n):
        attrs = {"shape": ATTRIBUTES["shape"][i % 5], "color": ATTRIBUTES["color"][i % 7],
                 "size": ATTRIBUTES["size"][(i // 9 + i) % 3], "position": ATTRIBUTES["position"][i % 9]}
        prompts.append((caption(attrs, 0), attrs))
    return prompts


# -- drawing ---------------------------------------------------------------------------------
def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "triangle":  # pointing up, filling the bounding box
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "star":  # five points; inner radius 0.45 keeps the arms thick enough at 32 px
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        return list(zip((cx + radii * np.cos(angles)).tolist(), (cy + radii * np.sin(angles)).tolist()))
    return None


def _draw(draw: ImageDraw.ImageDraw, obj: dict, side: int) -> None:
    cx, cy, r = obj["_cx"] * side, obj["_cy"] * side, obj["_r"] * side
    fill = obj["_rgb"]
    points = _polygon(obj["shape"], cx, cy, r)
    if points is None:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(points, fill=fill)


def _place(rng: np.random.Generator, position: str, size: str) -> tuple[float, float, float]:
    r = SIZE_FRACTION[size]
    k = ATTRIBUTES["position"].index(position)
    cx, cy = GRID[k % 3], GRID[k // 3]
    cx, cy = (np.clip(c + rng.uniform(-POSITION_JITTER, POSITION_JITTER), r + 0.01, 0.99 - r)
              for c in (cx, cy))
    return float(cx), float(cy), r


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int], amount: int = COLOR_JITTER
            ) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(np.array(rgb) + rng.integers(-amount, amount + 1, 3), 0, 255))


def _sample_object(rng: np.random.Generator, size: str | None = None,
                   withhold: dict[str, str] | None = None) -> dict:
    obj = {key: values[int(rng.integers(len(values)))] for key, values in ATTRIBUTES.items()}
    if size is not None:
        obj["size"] = size
    while withhold and any(obj.get(k) == v for k, v in withhold.items()):
        # redrawn from the same generator: still a pure function of (seed, index)
        obj = {key: values[int(rng.integers(len(values)))] for key, values in ATTRIBUTES.items()}
        if size is not None:
            obj["size"] = size
    obj["_cx"], obj["_cy"], obj["_r"] = _place(rng, obj["position"], obj["size"])
    obj["_rgb"] = _jitter(rng, COLORS_RGB[obj["color"]])
    return obj


def _overlaps(a: dict, b: dict, margin: float = 0.03) -> bool:
    gap = a["_r"] + b["_r"] + margin
    return abs(a["_cx"] - b["_cx"]) < gap and abs(a["_cy"] - b["_cy"]) < gap


def _public(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if not k.startswith("_")}


def draw_one(seed: int, index: int, resolution: int, second_object_prob: float = 0.0,
             withhold: dict[str, str] | None = None) -> tuple[np.ndarray, list[str], dict]:
    """Image ``index`` of set ``seed``: (uint8 [R, R, 3], captions, attributes).

    ``withhold`` ({attribute: value}, e.g. {"shape": "star"}): no object of the image has that
    value (redrawn until none has), so a model trained on the set never sees it — the concept a
    personalisation method learns later. Without it the draws are unchanged."""
    withhold = _check_withhold(withhold)
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    main = _sample_object(rng, withhold=withhold)
    background = list(BACKGROUNDS_RGB)[int(rng.integers(len(BACKGROUNDS_RGB)))]
    objects = [main]
    if second_object_prob > 0 and rng.random() < second_object_prob:
        # The second object takes a free cell; cells where it would touch the main one are refused.
        for _ in range(8):
            second = _sample_object(rng, size=SECOND_SIZE, withhold=withhold)
            if second["position"] != main["position"] and not _overlaps(main, second):
                objects.append(second)
                break
    side = resolution * SUPERSAMPLE
    canvas = Image.new("RGB", (side, side), _jitter(rng, BACKGROUNDS_RGB[background], BACKGROUND_JITTER))
    draw = ImageDraw.Draw(canvas)
    for obj in objects:
        _draw(draw, obj, side)
    image = np.asarray(canvas.reduce(SUPERSAMPLE))  # box filter = exact 4x4 area average
    attrs = {**_public(main), "background": background}
    if len(objects) > 1:
        attrs["second"] = _public(objects[1])
    captions = [caption(attrs, style, rng) for style in range(NUM_STYLES)]
    return image, captions, attrs


def _check_withhold(withhold: dict[str, str] | None) -> dict[str, str] | None:
    """``withhold`` checked: known attributes and values, never every value of one attribute."""
    if not withhold:
        return None
    for key, value in withhold.items():
        if key not in ATTRIBUTES or key == "size":
            raise ValueError(f"withhold {key!r}: use one of shape, color, position")
        if value not in ATTRIBUTES[key]:
            raise ValueError(f"withhold {key}={value!r}: not a {key}; use one of "
                             f"{', '.join(ATTRIBUTES[key])}")
    return dict(withhold)


def _check(count: int, resolution: int, second_object_prob: float) -> None:
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if resolution < 8:
        raise ValueError(f"resolution must be >= 8 px (shapes are unreadable below), got {resolution}")
    if not 0.0 <= second_object_prob <= 1.0:
        raise ValueError(f"second_object_prob must be in [0, 1], got {second_object_prob}")


def draw_shapes(count: int, resolution: int, seed: int, second_object_prob: float = 0.0) -> ShapesData:
    """Draw ``count`` images in memory (uint8 [N, R, R, 3]) with captions and attributes."""
    _check(count, resolution, second_object_prob)
    images = np.empty((count, resolution, resolution, 3), np.uint8)
    captions, attributes = [], []
    for i in range(count):
        images[i], caps, attrs = draw_one(seed, i, resolution, second_object_prob)
        captions.append(caps)
        attributes.append(attrs)
    return ShapesData(images, captions, attributes)


def write_shapes(dest: str | os.PathLike, count: int, resolution: int, seed: int,
                 second_object_prob: float = 0.0, progress=None,
                 withhold: dict[str, str] | None = None) -> Path:
    """Draw the set straight into an archive (atomic), one image at a time. Returns ``dest``.

    ``progress(n)`` is called after each image when given (the CLI's progress bar);
    ``withhold``: see ``draw_one`` (recorded in the archive's generator entry).
    """
    from langfree.data.archive import ArchiveWriter

    _check(count, resolution, second_object_prob)
    withhold = _check_withhold(withhold)
    extra = {"generator": {"name": "shapes", "seed": seed, "second_object_prob": second_object_prob}}
    if withhold:
        extra["generator"]["withhold"] = withhold
    with ArchiveWriter(dest, resolution, source="langfree shapes", extra=extra) as writer:
        for i in range(count):
            image, caps, attrs = draw_one(seed, i, resolution, second_object_prob, withhold)
            writer.add(image, captions=caps, source=f"shapes/seed{seed}/{i}", attributes=attrs)
            if progress is not None:
                progress(1)
    return Path(dest)
