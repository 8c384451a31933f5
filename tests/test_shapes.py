"""Shapes data: determinism, recognisable attributes, captions, archive and CLI."""

import hashlib

import numpy as np
import pytest
from typer.testing import CliRunner

from langfree.cli import app
from langfree.data.archive import ImageArchive
from langfree.data.shapes import (
    ATTRIBUTES,
    COLORS_RGB,
    NUM_STYLES,
    caption,
    draw_shapes,
    parse_attributes,
    prompt_grid,
    write_shapes,
)


@pytest.fixture(scope="module")
def single():
    return draw_shapes(400, 32, seed=7)


def _mask(image, color, tol=60):
    """Pixels close to the object's nominal colour (edges excluded by anti-aliasing)."""
    dist = np.abs(image.astype(int) - np.array(COLORS_RGB[color])).sum(-1)
    return dist < tol


def test_deterministic_and_prefix_stable():
    a = draw_shapes(12, 32, seed=3, second_object_prob=0.5)
    b = draw_shapes(20, 32, seed=3, second_object_prob=0.5)
    np.testing.assert_array_equal(a.images, b.images[:12])
    assert a.captions == b.captions[:12] and a.attributes == b.attributes[:12]


def test_distinct_seeds_give_disjoint_images():
    h0 = {hashlib.sha1(im.tobytes()).hexdigest() for im in draw_shapes(300, 32, seed=0).images}
    h1 = {hashlib.sha1(im.tobytes()).hexdigest() for im in draw_shapes(300, 32, seed=1).images}
    assert len(h0) == 300 and len(h1) == 300
    assert not h0 & h1


def test_output_types(single):
    assert single.images.dtype == np.uint8 and single.images.shape == (400, 32, 32, 3)
    assert all(len(c) == NUM_STYLES and len(set(c)) == NUM_STYLES for c in single.captions)


def test_every_attribute_value_occurs(single):
    for key, values in ATTRIBUTES.items():
        assert {a[key] for a in single.attributes} == set(values), key


def test_colour_and_position_readable_from_pixels(single):
    grid = np.array([0.2, 0.5, 0.8]) * 32
    for image, attrs in zip(single.images, single.attributes):
        mask = _mask(image, attrs["color"])
        assert mask.sum() >= 4, attrs  # the object shows in its own colour
        ys, xs = np.nonzero(mask)
        col, row = np.abs(grid - xs.mean()).argmin(), np.abs(grid - ys.mean()).argmin()
        assert ATTRIBUTES["position"][row * 3 + col] == attrs["position"], attrs


def test_sizes_clearly_ordered(single):
    areas = {s: [] for s in ATTRIBUTES["size"]}
    for image, attrs in zip(single.images, single.attributes):
        if attrs["shape"] == "square":
            areas[attrs["size"]].append(_mask(image, attrs["color"]).sum())
    small, medium, large = (np.array(areas[s]) for s in ATTRIBUTES["size"])
    assert small.max() < medium.min() and medium.max() < large.min()


def test_shapes_differ_in_fill_ratio():
    data = draw_shapes(300, 64, seed=11)
    fill = {s: [] for s in ATTRIBUTES["shape"]}
    for image, attrs in zip(data.images, data.attributes):
        if attrs["size"] == "large":
            ys, xs = np.nonzero(_mask(image, attrs["color"], tol=120))
            box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
            fill[attrs["shape"]].append(len(ys) / box)
    mean = {s: np.mean(v) for s, v in fill.items()}
    assert mean["square"] > mean["circle"] > mean["diamond"] > mean["star"]
    assert mean["circle"] > mean["triangle"] > mean["star"]


def test_second_object_is_smaller_and_apart():
    data = draw_shapes(300, 64, seed=5, second_object_prob=1.0)
    seconds = [a for a in data.attributes if "second" in a]
    assert len(seconds) > 150  # most images find a free cell
    checked = 0
    for image, attrs in zip(data.images, data.attributes):
        second = attrs.get("second")
        if second is None:
            continue
        assert second["size"] == "small" and second["position"] != attrs["position"]
        assert "and a small" in caption(attrs, 0)
        if second["color"] != attrs["color"]:
            a, b = _mask(image, attrs["color"]), _mask(image, second["color"])
            assert a.sum() > 0 and b.sum() > 0
            assert not (a & b).any()
            (ay, ax), (by, bx) = np.nonzero(a), np.nonzero(b)
            apart_x = ax.max() < bx.min() or bx.max() < ax.min()
            apart_y = ay.max() < by.min() or by.max() < ay.min()
            assert apart_x or apart_y
            checked += 1
    assert checked > 100


def test_canonical_caption_phrases():
    base = {"shape": "circle", "color": "red", "size": "large"}
    assert caption({**base, "position": "top left"}) == "a large red circle at the top left"
    assert caption({**base, "position": "center"}) == "a large red circle in the center"
    assert caption({**base, "position": "left"}) == "a large red circle on the left"
    assert caption({**base, "position": "top"}) == "a large red circle at the top"
    orange = {"shape": "square", "color": "orange", "size": "small", "position": "right"}
    assert caption(orange, 3).startswith("an orange")


def test_every_style_names_colour_and_parse_roundtrip(single):
    for caps, attrs in zip(single.captions, single.attributes):
        assert all(attrs["color"] in c for c in caps)
        parsed = parse_attributes(caps[0])
        assert parsed == {k: attrs[k] for k in ("shape", "color", "size", "position")}
        assert all(parse_attributes(c) is None for c in caps[1:])
    assert parse_attributes("a photo of a dog") is None


def test_parse_second_object():
    attrs = {"shape": "star", "color": "blue", "size": "medium", "position": "bottom right",
             "second": {"shape": "circle", "color": "white", "size": "small", "position": "top"}}
    assert parse_attributes(caption(attrs, 0)) == attrs


def test_prompt_grid_spans_attributes():
    grid = prompt_grid(45)
    assert len(grid) == 45 and len({p for p, _ in grid}) == 45
    for key, values in ATTRIBUTES.items():
        assert {a[key] for _, a in grid} == set(values), key
    assert all(parse_attributes(p) == a for p, a in grid)
    assert prompt_grid(9) == grid[:9]


def test_write_shapes_archive_matches_memory(tmp_path):
    dest = write_shapes(tmp_path / "s.zip", 30, 16, seed=2, second_object_prob=0.5)
    data = draw_shapes(30, 16, seed=2, second_object_prob=0.5)
    archive = ImageArchive(dest)
    assert len(archive) == 30 and archive.resolution == 16 and archive.has_captions
    for i in (0, 13, 29):
        np.testing.assert_array_equal(archive.image(i), data.images[i])
        assert archive.captions(i) == data.captions[i]
        assert archive.attributes(i) == data.attributes[i]
    again = write_shapes(tmp_path / "t.zip", 30, 16, seed=2, second_object_prob=0.5)
    assert dest.read_bytes() == again.read_bytes()


def test_invalid_arguments():
    with pytest.raises(ValueError, match="count"):
        draw_shapes(0, 32, 0)
    with pytest.raises(ValueError, match="second_object_prob"):
        draw_shapes(1, 32, 0, second_object_prob=1.5)


def test_cli_shapes(tmp_path):
    runner = CliRunner()
    dest = tmp_path / "cli.zip"
    result = runner.invoke(app, ["shapes", str(dest), "--count", "12", "--resolution", "16",
                                 "--seed", "4", "--second-object-prob", "0.5"])
    assert result.exit_code == 0, result.output
    archive = ImageArchive(dest)
    assert len(archive) == 12 and archive.resolution == 16
    np.testing.assert_array_equal(archive.image(5), draw_shapes(6, 16, 4, 0.5).images[5])
    bad = runner.invoke(app, ["shapes", str(tmp_path / "cli.txt"), "--count", "2"])
    assert bad.exit_code == 2 and not (tmp_path / "cli.txt").exists()
