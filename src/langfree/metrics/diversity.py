"""Sample diversity: do different seeds of one prompt give different images? (REFERENCE §6)

Pure functions over images and features; ``registry.py`` wires them to generated samples.

  pairwise_pixel_distance   mean |x_i - x_j| over pixels and channels, images in [0, 1], over all
                            pairs i < j of one set (0 = identical images; two shapes images with
                            different backgrounds differ by ~0.1-0.2)
  pairwise_embedding_distance  mean (1 - cos(e_i, e_j)) over pairs of embeddings
  diversity_ratio           per prompt: generated distance / real distance (1 = as varied as the
                            real images that have the prompt's attributes)
  classify_background       shapes' background colour from the border pixels, nearest palette
  coverage                  share of the data's values of an unprompted attribute seen in a set
  precision_recall          improved precision and recall (Kynkäänniemi et al. 2019), k-NN balls
"""

from __future__ import annotations

import torch


def _as_unit_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, H, W] or float in [0, 1] -> float32 [N, 3·H·W] in [0, 1]."""
    if images.dim() != 4:
        raise ValueError(f"expected images [N, C, H, W], got {list(images.shape)}")
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    return x.flatten(1)                                                 # [N, C·H·W]


def pairwise_pixel_distance(images: torch.Tensor) -> float:
    """Mean absolute pixel difference in [0, 1] over all pairs i < j of ``images`` [N, 3, H, W]
    (uint8, or float in [0, 1]). N >= 2."""
    x = _as_unit_images(images)                                         # [N, P]
    if len(x) < 2:
        raise ValueError(f"pairwise distance needs at least 2 images, got {len(x)}")
    d = torch.cdist(x.double(), x.double(), p=1) / x.shape[1]          # [N, N] mean |diff|
    i, j = torch.triu_indices(len(x), len(x), offset=1)
    return float(d[i, j].mean())


def pairwise_embedding_distance(emb: torch.Tensor) -> float:
    """Mean cosine distance 1 - cos(e_i, e_j) over all pairs i < j of ``emb`` [N, D]. N >= 2."""
    if emb.dim() != 2 or len(emb) < 2:
        raise ValueError(f"expected embeddings [N >= 2, D], got {list(emb.shape)}")
    e = torch.nn.functional.normalize(emb.double(), dim=-1)
    cos = e @ e.t()                                                     # [N, N]
    i, j = torch.triu_indices(len(e), len(e), offset=1)
    return float((1 - cos[i, j]).mean())


def diversity_ratio(generated: list[float], real: list[float]) -> dict:
    """Per-prompt ratios generated / real of a within-prompt distance, and their mean.

    Prompts whose real distance is 0 (fewer than two distinct real images) are skipped."""
    if len(generated) != len(real):
        raise ValueError(f"{len(generated)} generated and {len(real)} real distances: one each per prompt")
    ratios = [g / r for g, r in zip(generated, real) if r > 0]
    if not ratios:
        raise ValueError("diversity needs at least one prompt with two or more distinct real images")
    return {"value": sum(ratios) / len(ratios), "per_prompt": ratios,
            "generated_distance": sum(generated) / len(generated),
            "real_distance": sum(real) / len(real)}


def border_colour(images: torch.Tensor, width: int = 1) -> torch.Tensor:
    """Per-image median colour of the ``width``-px border ring: uint8 [N, 3, H, W] -> [N, 3] in
    0..255 (float). The median ignores an object that reaches into the ring."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [N, 3, H, W], got {list(images.shape)}")
    x = images.float() * (1.0 if images.dtype == torch.uint8 else 255.0)
    mask = torch.ones(images.shape[-2:], dtype=torch.bool)
    mask[width:-width, width:-width] = False
    ring = x[:, :, mask]                                                # [N, 3, ring pixels]
    return ring.median(dim=-1).values                                   # [N, 3]


def classify_background(images: torch.Tensor, palette: dict[str, tuple[int, int, int]]) -> list[str]:
    """Background colour names of uint8 images [N, 3, H, W]: the palette entry nearest (RGB
    Euclidean) to the median border colour. Shapes keep objects off the border, so the ring is
    background on real images (tests/test_metrics_diversity.py checks it against ground truth)."""
    names = list(palette)
    table = torch.tensor([palette[n] for n in names], dtype=torch.float32)     # [K, 3]
    nearest = torch.cdist(border_colour(images), table).argmin(dim=1)          # [N]
    return [names[int(k)] for k in nearest]


def coverage(values: list, data_values: set | list) -> float:
    """Share of ``data_values`` (the attribute's values in the data) that occur in ``values``."""
    data_values = set(data_values)
    if not data_values:
        raise ValueError("coverage needs at least one data value")
    return len(set(values) & data_values) / len(data_values)


def knn_radii(features: torch.Tensor, k: int = 3, batch: int = 1024) -> torch.Tensor:
    """Distance from each row of ``features`` [N, F] to its k-th nearest OTHER row: [N]."""
    if len(features) <= k:
        raise ValueError(f"k-NN radii need more than k={k} samples, got {len(features)}")
    f = features.double()
    out = []
    for i in range(0, len(f), batch):
        d = torch.cdist(f[i:i + batch], f)                              # [b, N]
        out.append(d.kthvalue(k + 1, dim=1).values)   # k + 1: the row itself is at distance 0
    return torch.cat(out)


def _inside(query: torch.Tensor, support: torch.Tensor, radii: torch.Tensor,
            batch: int = 1024) -> torch.Tensor:
    """[Q] bool: is each query within radii[j] of some support row j?"""
    q, s = query.double(), support.double()
    out = []
    for i in range(0, len(q), batch):
        d = torch.cdist(q[i:i + batch], s)                              # [b, S]
        out.append((d <= radii[None, :]).any(dim=1))
    return torch.cat(out)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of features [N, F] and [M, F].

    Each set's manifold is the union of balls around its samples with radius = distance to the
    sample's k-th nearest neighbour in the same set. precision = share of fakes inside the real
    manifold (fidelity); recall = share of reals inside the fake manifold (coverage of the data:
    a generator that draws one image per condition has low recall)."""
    if real.dim() != 2 or fake.dim() != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"precision_recall: expected [N, F] and [M, F], got {list(real.shape)} "
                         f"and {list(fake.shape)}")
    precision = _inside(fake, real, knn_radii(real, k)).double().mean()
    recall = _inside(real, fake, knn_radii(fake, k)).double().mean()
    return float(precision), float(recall)
