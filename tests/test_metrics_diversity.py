"""Diversity metrics (issue 9): pure functions, the background reader on real shapes, and the
registry wiring on a tiny shapes reference with fake generators of known diversity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from langfree.data.shapes import BACKGROUNDS_RGB, draw_shapes
from langfree.metrics import diversity as div
from langfree.metrics.registry import parse_metric


def _shapes(n=64, seed=5):
    data = draw_shapes(n, 32, seed)
    return torch.from_numpy(data.images).permute(0, 3, 1, 2).contiguous(), data.attributes


def test_pixel_distance_of_identical_images_is_zero_and_of_black_white_is_one():
    img = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8)
    assert div.pairwise_pixel_distance(img.repeat(5, 1, 1, 1)) == 0.0
    bw = torch.stack([torch.zeros(3, 4, 4), torch.ones(3, 4, 4)])
    assert div.pairwise_pixel_distance(bw) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        div.pairwise_pixel_distance(img)


def test_embedding_distance_zero_for_equal_and_one_for_orthogonal():
    e = torch.randn(1, 8)
    assert div.pairwise_embedding_distance(e.repeat(4, 1)) == pytest.approx(0.0, abs=1e-9)
    assert div.pairwise_embedding_distance(torch.eye(2)) == pytest.approx(1.0)


def test_diversity_ratio_of_real_like_samples_is_about_one_and_of_copies_zero():
    images, _ = _shapes(64)
    real = div.pairwise_pixel_distance(images[:32])
    like_data = div.pairwise_pixel_distance(images[32:])
    copies = div.pairwise_pixel_distance(images[:1].repeat(16, 1, 1, 1))
    assert div.diversity_ratio([like_data], [real])["value"] == pytest.approx(1.0, abs=0.15)
    assert div.diversity_ratio([copies], [real])["value"] == 0.0
    out = div.diversity_ratio([0.1, 0.2], [0.2, 0.0])   # a prompt with no real spread is skipped
    assert out["per_prompt"] == [0.5]


def test_background_reader_matches_ground_truth_on_real_shapes():
    images, attrs = _shapes(400, seed=11)
    read = div.classify_background(images, BACKGROUNDS_RGB)
    accuracy = np.mean([r == a["background"] for r, a in zip(read, attrs)])
    assert accuracy >= 0.99


def test_coverage_of_a_constant_background_is_one_over_k():
    images, attrs = _shapes(16)
    const = images.clone()
    const[:] = images[:1]                           # 16 copies: one background only
    values = sorted(BACKGROUNDS_RGB)
    read = div.classify_background(const, BACKGROUNDS_RGB)
    assert div.coverage(read, values) == pytest.approx(1 / len(values))
    read_real = div.classify_background(images, BACKGROUNDS_RGB)
    assert div.coverage(read_real, values) >= 0.75  # 16 real images: P(a colour missing) ~ 1 %


def test_precision_recall_identical_about_one_disjoint_zero_collapsed_low_recall():
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(300, 4, generator=gen)
    same = torch.randn(300, 4, generator=gen)
    p, r = div.precision_recall(real, same, k=3)
    assert p > 0.9 and r > 0.9
    p, r = div.precision_recall(real, same + 100.0, k=3)
    assert p == 0.0 and r == 0.0
    collapsed = real[:5].repeat(60, 1) + 1e-3 * torch.randn(300, 4, generator=gen)
    p, r = div.precision_recall(real, collapsed, k=3)
    assert p > 0.9 and r < 0.2                       # faithful but one image per mode


def test_metric_names_parse():
    assert parse_metric("diversity").num == 1024
    assert parse_metric("unprompted_coverage512").num == 512
    spec = parse_metric("pr2k3")
    assert (spec.kind, spec.num) == ("pr", 2000)
    assert parse_metric("pr5003").num == 500


class _TextOnly:
    """Encoder stand-in: text -> a one-hot-ish embedding, images -> their mean colour."""

    spec = "test:fake"
    embed_dim = 8

    def encode_text(self, texts):
        out = torch.zeros(len(texts), self.embed_dim)
        for i, t in enumerate(texts):
            out[i, hash(t) % self.embed_dim] = 1.0
        return out

    def encode_image(self, x):
        m = x.mean(dim=(2, 3))                                          # [B, 3]
        return torch.nn.functional.normalize(torch.cat([m, torch.ones(len(x), 5)], 1), dim=-1)


def test_registry_diversity_and_coverage_see_a_collapsed_generator(tmp_path):
    from langfree.data.archive import ImageArchive
    from langfree.data.shapes import write_shapes
    from langfree.metrics import compute_metrics

    ref_path = write_shapes(tmp_path / "ref.zip", 1500, 32, seed=3)
    ref = ImageArchive(ref_path, preload=True)
    pool = ref.images(range(len(ref))).float() / 127.5 - 1                 # [N, 3, 32, 32]

    def collapsed(cond, seeds):                 # one image per condition, whatever the seed
        return pool[:1].repeat(len(seeds), 1, 1, 1)

    def varied(cond, seeds):                    # a different real image per seed
        return pool[torch.tensor(seeds) + 100]

    names = ["diversity64", "unprompted_coverage64"]
    low = compute_metrics(names, collapsed, _TextOnly(), ref)
    high = compute_metrics(names, varied, _TextOnly(), ref)
    assert low["diversity64"]["value"] == 0.0
    assert low["unprompted_coverage64"]["value"] == pytest.approx(0.25)
    assert high["diversity64"]["value"] > 0.5
    assert high["unprompted_coverage64"]["value"] >= 0.75
    assert high["unprompted_coverage64"]["classifier_accuracy_real"] >= 0.99
    assert low["diversity64"]["prompts"] >= 1   # ~5 reals per combination at 1 500


def test_seed_groups_fill_batches_and_equal_one_image_at_a_time(tmp_path):
    """The 16 seeds of many prompts go through ``generate`` ``batch`` rows at a time (not 16 per
    call), and each image still depends only on its row and seed: batch 64 and batch 1 agree."""
    from langfree.data.archive import ImageArchive
    from langfree.data.shapes import write_shapes
    from langfree.metrics import compute_metrics

    ref = ImageArchive(write_shapes(tmp_path / "ref.zip", 1500, 32, seed=3), preload=True)
    pool = ref.images(range(len(ref))).float() / 127.5 - 1
    calls: list[int] = []

    def rowwise(cond, seeds):                   # row r, seed s -> a real image shifted by row r
        calls.append(len(seeds))
        shift = cond.embeddings[:, :1, None, None] * 0.1
        return (pool[torch.tensor(seeds) + 100] + shift).clamp(-1, 1)

    names = ["diversity128", "unprompted_coverage128"]   # 8 prompts x 16 seeds
    batched = compute_metrics(names, rowwise, _TextOnly(), ref, batch=64)
    assert calls == [64, 64]
    calls.clear()
    single = compute_metrics(names, rowwise, _TextOnly(), ref, batch=1)
    assert calls == [1] * 128
    for name in names:
        assert batched[name]["value"] == pytest.approx(single[name]["value"], abs=1e-9)
    assert batched["diversity128"]["per_prompt"] == single["diversity128"]["per_prompt"]
