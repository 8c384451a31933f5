"""Data: an infinite, resumable key stream, split across processes, and batch preparation.

The global stream is a pure function of (seed, position): position p lies in epoch p // N and
yields the key ``epoch * N + perm[p % N]`` with ``perm`` seeded by (seed, epoch). Datasets map
``key % N`` to the item (and may use ``key // N`` as the epoch, e.g. to pick a caption). A step
consumes ``batch`` consecutive positions; rank r takes positions p ≡ r (mod world). Resuming at
position nimg therefore reproduces every later batch without saving DataLoader/worker state.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler, default_collate


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of dataset indices in ``epoch`` (a pure function of seed and epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


class KeySampler(Sampler[int]):
    """Infinite keys for ``rank`` of ``world``, starting at global position ``start``."""

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1, start: int = 0):
        if n <= 0:
            raise ValueError("the training dataset is empty; build it with `langfree dataset`")
        if start % world:
            raise ValueError(
                f"start position {start} is not a multiple of the process count {world}"
            )
        self.n, self.seed, self.rank, self.world, self.start = n, seed, rank, world, start

    def __iter__(self) -> Iterator[int]:
        pos = self.start + self.rank
        epoch, perm = -1, None
        while True:
            if pos // self.n != epoch:
                epoch = pos // self.n
                perm = epoch_permutation(self.n, self.seed, epoch)
            yield int(epoch * self.n + perm[pos % self.n])
            pos += self.world


def make_loader(
    dataset: Any, batch_gpu: int, seed: int, rank: int, world: int, start: int, workers: int
) -> Iterator[dict[str, Any]]:
    """An endless iterator of collated micro-batches for this rank."""
    sampler = KeySampler(len(dataset), seed, rank, world, start)
    # A private generator: DataLoader draws a worker base seed when an iterator is created,
    # which would otherwise consume the global RNG (and break exact resume).
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        dataset,
        batch_size=batch_gpu,
        sampler=sampler,
        num_workers=workers,
        collate_fn=default_collate,
        generator=generator,
        persistent_workers=workers > 0,
    )
    return iter(loader)


def prepare_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move tensors to ``device``; ``image`` uint8 [B,3,H,W] -> float32 in [-1, 1]."""
    out = {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }
    image = out.get("image")
    if image is not None and image.dtype == torch.uint8:
        out["image"] = image.to(torch.float32) / 127.5 - 1
    return out
