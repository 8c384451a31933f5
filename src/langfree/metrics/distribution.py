"""FID, KID and Inception Score from precomputed features, with torchmetrics doing the maths.

Features are extracted once per image set (see ``registry.EvalContext``) and handed to the
torchmetrics metric objects through an identity "network", so FID and KID of one evaluation
share both the reference statistics and the generated images. The random subsets of KID and
the shuffle of IS come from a seeded RNG fork: the same features give the same number.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn


class _Given(nn.Module):
    """Identity 'feature network': the metric objects receive features, not images."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _check(real: torch.Tensor, fake: torch.Tensor, name: str, minimum: int = 2) -> None:
    if real.dim() != 2 or fake.dim() != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"{name}: expected features [N, F] with equal F, got "
                         f"{list(real.shape)} and {list(fake.shape)}")
    if len(real) < minimum or len(fake) < minimum:
        raise ValueError(f"{name} needs at least {minimum} real and generated images, got "
                         f"{len(real)} and {len(fake)}; raise the number of samples")


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID between two feature sets [N, F] (Gaussian fit, float64): Heusel et al. 2017."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    _check(real, fake, "FID")
    metric = FrechetInceptionDistance(feature=_Given(real.shape[1]))  # states are float64
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    # FID >= 0 mathematically; tiny negative values are eigenvalue round-off on identical sets.
    return max(float(metric.compute()), 0.0)


def kernel_distance(real: torch.Tensor, fake: torch.Tensor, seed: int = 0, subsets: int = 100,
                    max_subset_size: int = 1000) -> tuple[float, float]:
    """KID (unbiased MMD^2, cubic polynomial kernel) averaged over random subsets, as
    StyleGAN2-ADA's kid50k_full (100 subsets of at most 1000). Returns (mean, std)."""
    from torchmetrics.image.kid import KernelInceptionDistance

    _check(real, fake, "KID")
    size = min(len(real), len(fake), max_subset_size)
    with warnings.catch_warnings():  # "saves all features in buffer": we hand it features anyway
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(feature=_Given(real.shape[1]), subsets=subsets,
                                         subset_size=size)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def inception_score(logits: torch.Tensor, seed: int = 0, splits: int = 10) -> tuple[float, float]:
    """IS = exp(E[KL(p(y|x) || p(y))]) over ``splits`` groups (Salimans et al. 2016), from the
    Inception classifier's logits [N, C]. Returns (mean, std) over the groups."""
    from torchmetrics.image.inception import InceptionScore

    splits = max(1, min(splits, len(logits) // 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        metric = InceptionScore(feature=_Given(logits.shape[1]), splits=splits)
    metric.update(logits.double())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std) if splits > 1 else 0.0
