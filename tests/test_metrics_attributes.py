"""Shapes attribute evaluator: trains to well above chance on real images, round-trips through
safetensors + JSON, scores a generator that draws the prompted shape near the ceiling and a
noise generator near chance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from langfree.data import shapes
from langfree.metrics import (
    attribute_accuracy,
    balanced_prompts,
    compute_metrics,
    load_attribute_evaluator,
    train_attribute_evaluator,
)
from test_metrics_helpers import PixelEncoder

N = 135  # 1/7 of the 945 combinations: every class of every attribute appears


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("evaluator")
    archive = shapes.write_shapes(root / "shapes.zip", 1500, 32, seed=11)
    evaluator, ceiling = train_attribute_evaluator(archive, root / "ev", epochs=8, width=16, seed=0)
    return root, evaluator, ceiling


def render(attrs: dict, resolution: int = 32) -> np.ndarray:
    """Draw the main object of ``attrs`` the way the shapes data does (centred in its grid cell,
    4x supersampled), on a black background: the 'perfect generator' of the tests."""
    side = resolution * shapes.SUPERSAMPLE
    r = shapes.SIZE_FRACTION[attrs["size"]] * side
    k = shapes.ATTRIBUTES["position"].index(attrs["position"])
    cx, cy = shapes.GRID[k % 3] * side, shapes.GRID[k // 3] * side
    canvas = Image.new("RGB", (side, side), shapes.BACKGROUNDS_RGB["black"])
    draw = ImageDraw.Draw(canvas)
    fill = shapes.COLORS_RGB[attrs["color"]]
    kind = attrs["shape"]
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == "square":
        draw.polygon([(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    elif kind == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    elif kind == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    else:  # star: five points, inner radius 0.45 r
        pts = [(cx + (r if i % 2 == 0 else 0.45 * r) * math.cos(-math.pi / 2 + i * math.pi / 5),
                cy + (r if i % 2 == 0 else 0.45 * r) * math.sin(-math.pi / 2 + i * math.pi / 5))
               for i in range(10)]
        draw.polygon(pts, fill=fill)
    return np.asarray(canvas.reduce(shapes.SUPERSAMPLE))


def perfect_generator(encoder: PixelEncoder, n: int, seed: int):
    """Recovers each prompt from its condition (nearest text embedding) and draws it."""
    prompts = [p for p, _ in balanced_prompts(n, seed)]
    table = encoder.encode_text(prompts)

    def generate(conditions, seeds: list[int]) -> torch.Tensor:
        rows = (conditions.embeddings @ table.T).argmax(1).tolist()
        images = [render(shapes.parse_attributes(prompts[r])) for r in rows]
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1

    return generate


def noise_generator(conditions: torch.Tensor, seeds: list[int]) -> torch.Tensor:
    return torch.stack([torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(s)) * 2 - 1
                        for s in seeds])


def test_evaluator_reads_real_images_well_above_chance(trained):
    _, evaluator, ceiling = trained
    chance = {k: 1 / len(v) for k, v in evaluator.attributes.items()}
    for k in ("shape", "color", "size", "position"):
        assert ceiling[k] > chance[k] + 0.3, (k, ceiling[k])
    assert ceiling["overall"] > 0.3


def test_evaluator_round_trip(trained):
    root, evaluator, ceiling = trained
    loaded = load_attribute_evaluator(root / "ev")
    assert loaded.ceiling == ceiling and loaded.attributes == evaluator.attributes
    images = torch.randint(0, 256, (8, 3, 48, 48), dtype=torch.uint8)  # other size: resized
    a, b = evaluator.predict(images), loaded.predict(images)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in (root / "ev").iterdir()) == ["evaluator.json", "evaluator.safetensors"]


def test_balanced_prompts_cover_every_class():
    prompts = balanced_prompts(N, seed=0)
    assert len(prompts) == N and prompts == balanced_prompts(N, seed=0)
    for k in ("shape", "color", "size", "position"):
        assert {a[k] for _, a in prompts} == set(shapes.ATTRIBUTES[k])
    assert all(shapes.parse_attributes(p) == a for p, a in prompts)


def test_perfect_generator_scores_near_ceiling_and_noise_near_chance(trained):
    _, evaluator, ceiling = trained
    encoder = PixelEncoder()
    good = attribute_accuracy(perfect_generator(encoder, N, 0), encoder, evaluator, n=N, seed=0)
    bad = attribute_accuracy(noise_generator, encoder, evaluator, n=N, seed=0)
    assert good["ceiling"] == ceiling
    for k in ("shape", "color", "size", "position"):
        assert good[k] > ceiling[k] - 0.2, (k, good[k], ceiling[k])
        assert bad[k] < bad["chance"][k] + 0.25, (k, bad[k])
    assert good["overall"] > ceiling["overall"] - 0.25
    assert bad["overall"] < 0.1
    assert good["value"] == good["overall"] and good["num"] == N


def test_attribute_accuracy_through_the_registry(trained):
    _, evaluator, _ = trained
    encoder = PixelEncoder()
    seen: list[int] = []

    def generate(conditions, seeds):
        seen.extend(seeds)
        return perfect_generator(encoder, 20, 4)(conditions, seeds)

    a = compute_metrics(["attribute_accuracy20"], generate, encoder, evaluator=evaluator, seed=4)
    b = compute_metrics(["attribute_accuracy20"], generate, encoder, evaluator=evaluator, seed=4)
    assert seen == list(range(4, 24)) * 2
    assert a["attribute_accuracy20"]["overall"] == b["attribute_accuracy20"]["overall"]
    missing = compute_metrics(["attribute_accuracy20"], generate, encoder)
    assert missing["attribute_accuracy20"]["value"] is None


def test_evaluator_trains_through_the_generic_train_command(trained, tmp_path):
    from langfree.checkpoint import resolve_snapshot
    from langfree.training.options import TrainOptions
    from langfree.training.run import TrainRequest, train

    root, _, _ = trained
    run = train(TrainRequest("attribute-evaluator", data=root / "shapes.zip",
                             family_options={"width": 8},
                             options=TrainOptions(outdir=str(tmp_path), kimg=0.064, batch=32,
                                                  tick_kimg=0.032, snap=0)))
    loaded = load_attribute_evaluator(resolve_snapshot(run) / "export")
    assert loaded.net.body[0].out_channels == 8 and loaded.ceiling == {}
    from langfree.data.archive import ImageArchive

    pred = loaded.predict(ImageArchive(root / "shapes.zip").images(range(4)))
    assert set(pred) == set(loaded.attributes) and len(pred["shape"]) == 4
