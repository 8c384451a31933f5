"""Test doubles for the metrics tests: a tiny deterministic encoder and a tiny extractor."""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F

from langfree.metrics.extractors import FeatureExtractor


class PixelEncoder:
    """TextImageEncoder double. Text: a fixed random unit vector per string (sha256-seeded).
    Image: the first ``embed_dim`` pixels of row 0, red channel, normalised, so a generator can
    write a condition into the image and the encoder reads it back (an 'oracle' sampler)."""

    spec = "test:pixel"
    image_size = 32

    def __init__(self, embed_dim: int = 16) -> None:
        self.embed_dim = embed_dim

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        rows = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
            rows.append(torch.randn(self.embed_dim, generator=torch.Generator().manual_seed(seed)))
        return F.normalize(torch.stack(rows), dim=1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(images[:, 0, 0, : self.embed_dim].float(), dim=1)

    def to(self, device):
        return self


def write_condition(images: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
    """Put each condition into the pixels PixelEncoder reads (unit vectors fit in [-1, 1])."""
    out = images.clone()
    out[:, 0, 0, : conditions.shape[1]] = conditions
    return out


def tiny_extractor() -> FeatureExtractor:
    """Mean colour of a 4x4 grid of cells plus per-channel std: 51 features, no weights."""

    def fn(images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images.float() / 255.0
        cells = F.adaptive_avg_pool2d(x, 4).flatten(1)  # (N, 48)
        return {"features": torch.cat([cells, x.flatten(2).std(2)], 1)}  # (N, 51)

    return FeatureExtractor("test:grid-colour", inception=False, fn=fn)
