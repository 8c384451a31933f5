"""Tiny families and an in-memory dataset for engine tests (CPU, milliseconds per step).

- ``TinyDenoiser`` ("tiny"): one optimiser, one phase; an MLP predicting the clean
  8×8 image from its noisy copy, conditioned on ``image_emb`` (the diffusion/AR shape).
- ``TinyGAN`` ("tiny_gan"): G, D and a lazy R1 phase 'Dreg' (the GAN shape). Records which
  parameters required grad in each phase so tests can check the loop froze the others.
- ``TinyDataset``: N fixed images following the key contract (``key % N``).
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from langfree.families.base import LossOutput, Phase
from langfree.families.spec import Flag, TrainSpec

FAMILIES = {"tiny": "tiny_family:TINY_SPEC", "tiny_gan": "tiny_family:TINY_GAN_SPEC"}


def register(monkeypatch=None) -> None:
    """Make the tiny families loadable through langfree.families.registry."""
    from langfree.families import registry

    if monkeypatch is not None:
        for name, target in FAMILIES.items():
            monkeypatch.setitem(registry._FAMILIES, name, target)
    else:
        registry._FAMILIES.update(FAMILIES)


class TinyDataset(torch.utils.data.Dataset):
    """``n`` random 8×8 images made of 4 colour blobs + a 4-d normalised 'image embedding'."""

    def __init__(self, n: int = 16, resolution: int = 8, cond_dim: int = 4, sleep: float = 0.0):
        g = torch.Generator().manual_seed(1234)
        self.emb = F.normalize(torch.randn(n, cond_dim, generator=g), dim=1)
        coarse = torch.rand(n, 3, 2, 2, generator=g)
        up = F.interpolate(coarse, size=resolution, mode="nearest")  # [n, 3, R, R]
        self.images = (up * 255).round().to(torch.uint8)
        self.sleep = sleep  # lets a subprocess test kill a run mid-tick

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int) -> dict:
        if self.sleep:
            time.sleep(self.sleep)
        i = key % len(self.images)
        return {"image": self.images[i], "index": i, "image_emb": self.emb[i]}


@dataclass(frozen=True)
class TinyConfig:
    resolution: int = 8
    cond_dim: int = 4
    hidden: int = 32
    lr: float = 1e-2
    sigma: float = 0.5
    nan_at_step: int = -1  # test hook: the loss is NaN from this step on


@dataclass(frozen=True)
class TinySampleOptions:
    """The tiny family's own sampling option: how much noise the denoiser starts from."""

    noise_scale: float = field(default=1.0, metadata={"min": 0.0, "max": 4.0,
                                                      "help": "Multiplies the starting noise."})


class TinyDenoiser:
    name = "tiny"
    Config = TinyConfig
    SampleOptions = TinySampleOptions
    needs = frozenset({"image", "image_emb"})

    def __init__(self, config: TinyConfig, encoder=None):
        self.config, self.encoder = config, encoder
        d = 3 * config.resolution**2
        self.net = nn.Sequential(
            nn.Linear(d + config.cond_dim, config.hidden), nn.SiLU(), nn.Linear(config.hidden, d)
        )
        self.net_ema = copy.deepcopy(self.net).eval().requires_grad_(False)
        self._optimizers = None

    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net, "net_ema": self.net_ema}

    def ema_pairs(self):
        return [("net", "net_ema")]

    def optimizers(self):
        if self._optimizers is None:
            self._optimizers = {"main": torch.optim.Adam(self.net.parameters(), lr=self.config.lr)}
        return self._optimizers

    def phases(self):
        return [Phase("main", ("net",), "main")]

    def loss(self, phase, nets, batch, progress):
        x = batch["image"].flatten(1)  # [B, 3*R*R] in [-1, 1]
        n = torch.randn_like(x)
        # x-prediction: the clean image from its noisy copy and its embedding (learnable to ~0)
        pred = nets["net"](torch.cat([x + self.config.sigma * n, batch["image_emb"]], 1))
        loss = (pred - x).square().mean()
        if 0 <= self.config.nan_at_step <= progress.step:
            loss = loss * float("nan")
        return LossOutput(loss, {"pred_std": pred.std()})

    @torch.no_grad()
    def sample(self, conditions, seeds, options=None):
        options = options or TinySampleOptions()
        condition = conditions.require_embeddings("tiny") if hasattr(conditions, "prompts") else conditions
        r = self.config.resolution
        noise = torch.stack(
            [torch.randn(3 * r * r, generator=torch.Generator().manual_seed(s)) for s in seeds]
        )  # [B, 3*R*R]
        x = self.config.sigma * options.noise_scale * noise
        x = self.net_ema(torch.cat([x, condition.float()], 1))
        return x.clamp(-1, 1).reshape(len(seeds), 3, r, r)


@dataclass(frozen=True)
class TinyGANConfig:
    resolution: int = 8
    cond_dim: int = 4
    z_dim: int = 8
    hidden: int = 32
    lr: float = 2e-3
    r1_gamma: float = 1.0
    r1_interval: int = 4


class TinyGAN:
    name = "tiny_gan"
    Config = TinyGANConfig
    needs = frozenset({"image", "image_emb"})

    def __init__(self, config: TinyGANConfig, encoder=None):
        self.config, self.encoder = config, encoder
        d = 3 * config.resolution**2
        self.G = nn.Sequential(
            nn.Linear(config.z_dim + config.cond_dim, config.hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(config.hidden, d),
            nn.Tanh(),
        )
        # a buffer updated in forward passes (like StyleGAN's w_avg): differs per process
        self.G.register_buffer("fake_mean", torch.zeros(()))
        self.D = nn.Sequential(
            nn.Linear(d + config.cond_dim, config.hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(config.hidden, 1),
        )
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self._optimizers = None
        self.trainable_seen: dict[str, set[str]] = {}  # phase -> module names with grads on
        self.calls: Counter = Counter()  # phase -> loss calls

    def modules(self):
        return {"G": self.G, "D": self.D, "G_ema": self.G_ema}

    def ema_pairs(self):
        return [("G", "G_ema")]

    def optimizers(self):
        if self._optimizers is None:
            betas = (0.0, 0.99)
            self._optimizers = {
                "G": torch.optim.Adam(self.G.parameters(), self.config.lr, betas=betas),
                "D": torch.optim.Adam(self.D.parameters(), self.config.lr, betas=betas),
            }
        return self._optimizers

    def phases(self):
        return [
            Phase("G", ("G",), "G"),
            Phase("D", ("D",), "D"),
            Phase("Dreg", ("D",), "D", interval=self.config.r1_interval),
        ]

    def _record(self, phase, nets):
        on = {n for n, m in nets.items() if any(p.requires_grad for p in m.parameters())}
        self.trainable_seen.setdefault(phase.name, set()).update(on)
        self.calls[phase.name] += 1

    def _d(self, nets, img, c):
        return nets["D"](torch.cat([img.flatten(1), c], 1)).squeeze(1)  # [B] logits

    def _fake(self, nets, c):
        z = torch.randn(len(c), self.config.z_dim, device=c.device)
        r = self.config.resolution
        return nets["G"](torch.cat([z, c], 1)).reshape(len(c), 3, r, r)

    def loss(self, phase, nets, batch, progress):
        self._record(phase, nets)
        real, c = batch["image"], batch["image_emb"]
        if phase.name == "G":
            fake = self._fake(nets, c)
            nets["G"].fake_mean.lerp_(fake.detach().mean(), 0.1)
            return LossOutput(F.softplus(-self._d(nets, fake, c)).mean())
        if phase.name == "D":
            fake = self._fake(nets, c).detach()
            loss = (
                F.softplus(self._d(nets, fake, c)).mean()
                + F.softplus(-self._d(nets, real, c)).mean()
            )
            return LossOutput(loss)
        real = real.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(self._d(nets, real, c).sum(), real, create_graph=True)
        r1 = grad.square().sum([1, 2, 3]).mean()
        # lazy regularisation: run every r1_interval steps with the gain scaled to match
        return LossOutput(r1 * (self.config.r1_gamma / 2) * phase.interval, {"r1": r1})

    SampleOptions = TinySampleOptions

    @torch.no_grad()
    def sample(self, conditions, seeds, options=None):
        condition = conditions.require_embeddings("tiny_gan") if hasattr(conditions, "prompts") else conditions
        z = torch.stack(
            [
                torch.randn(self.config.z_dim, generator=torch.Generator().manual_seed(s))
                for s in seeds
            ]
        )
        r = self.config.resolution
        return self.G_ema(torch.cat([z, condition], 1)).reshape(len(seeds), 3, r, r)


def _configure(data, ctx):
    """Resolution from the archive, condition width from the encoder."""
    data["resolution"] = ctx.archive.resolution
    if ctx.encoder is not None:
        data["cond_dim"] = ctx.encoder.embed_dim
    return data


TINY_SPEC = TrainSpec(
    name="tiny", family="tiny_family:TinyDenoiser", config="tiny_family:TinyConfig",
    presets="tiny_family:TINY_PRESETS", help="Test family: a conditional MLP denoiser.",
    flags=(Flag(("--hidden",), "hidden", int, "MLP width."),
           Flag(("--sigma",), "sigma", float, "Noise level of the denoising task.")),
    configure=_configure, encoder="required")
TINY_GAN_SPEC = TrainSpec(
    name="tiny_gan", family="tiny_family:TinyGAN", config="tiny_family:TinyGANConfig",
    help="Test family: a conditional MLP GAN.", configure=_configure, encoder="required")
TINY_PRESETS = {"wide": TinyConfig(hidden=64)}
