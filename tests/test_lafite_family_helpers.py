"""(No tests here.) Tiny stand-ins shared by the LAFITE family / CLI tests (CPU, milliseconds).

``tiny_config`` is a LafiteConfig small enough to train a step in well under a second.
``ToyEncoder`` is a frozen random text-image encoder obeying the TextImageEncoder contract.
``StandInGenerator`` / ``StandInDiscriminator`` follow the networks contract (CONTRACTS.md) and
are used only when langfree.families.lafite.networks is not importable yet.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch import nn

from langfree.families.lafite.config import LafiteConfig


def tiny_config(**changes) -> LafiteConfig:
    base = {"resolution": 8, "z_dim": 8, "w_dim": 16, "c_dim": 16, "channel_base": 64,
            "channel_max": 8, "mapping_layers": 1, "change_resolution": 8, "mbstd_group_size": 2,
            "perturb_hidden": 16, "temperature": 0.5, "pl_weight": 2.0, "style_mixing": 0.5,
            "mirror": True, "ema_kimg": 0.01}
    base.update(changes)
    return LafiteConfig(**base)


class ToyEncoder(nn.Module):
    """Words -> hashed random vectors (summed); images -> a frozen linear map. Differentiable."""

    def __init__(self, dim: int = 16, image_size: int = 8, seed: int = 0):
        super().__init__()
        self.embed_dim = dim
        self.image_size = image_size
        self.spec = f"toy:{dim}"
        g = torch.Generator().manual_seed(seed)
        self.proj = nn.Linear(3 * image_size * image_size, dim)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(self.proj.weight.shape, generator=g) * 0.1)
        self.requires_grad_(False).eval()

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        rows = []
        for text in texts:
            v = torch.zeros(self.embed_dim)
            for word in text.split():
                seed = int(hashlib.md5(word.encode()).hexdigest()[:8], 16)
                v += torch.randn(self.embed_dim, generator=torch.Generator().manual_seed(seed))
            rows.append(v)
        return F.normalize(torch.stack(rows) + 1e-6, dim=-1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images.float(), size=(self.image_size, self.image_size),
                          mode="bilinear", align_corners=False)
        return F.normalize(self.proj(x.flatten(1)), dim=-1)


class StandInGenerator(nn.Module):
    def __init__(self, z_dim, c_dim, w_dim, img_resolution, img_channels=3, **_):
        super().__init__()
        self.z_dim, self.w_dim, self.res, self.num_ws = z_dim, w_dim, img_resolution, 2
        self.map = nn.Linear(z_dim, w_dim)
        self.syn = nn.Linear(w_dim + c_dim, img_channels * img_resolution ** 2)
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def mapping(self, z, truncation_psi=1.0):
        w = F.leaky_relu(self.map(z), 0.2)                              # [B, w]
        w = self.w_avg.lerp(w, truncation_psi)
        return w[:, None].repeat(1, self.num_ws, 1)                     # [B, num_ws, w]

    def synthesis(self, ws, c, noise_mode="random"):
        x = self.syn(torch.cat([ws.mean(1), c], 1))
        if noise_mode == "random":
            x = x + 0.01 * torch.randn_like(x)
        return torch.tanh(x).view(-1, 3, self.res, self.res)

    def forward(self, z, c, truncation_psi=1.0, noise_mode="random", style_mix_prob=0.0):
        return self.synthesis(self.mapping(z, truncation_psi), c, noise_mode)


class StandInDiscriminator(nn.Module):
    def __init__(self, c_dim, img_resolution, img_channels=3, **_):
        super().__init__()
        self.body = nn.Linear(img_channels * img_resolution ** 2, 32)
        self.out = nn.Linear(32, 1)
        self.fts = nn.Linear(32, c_dim)

    def forward(self, img, c):
        x = F.leaky_relu(self.body(img.flatten(1)), 0.2)
        f = self.fts(x)
        return self.out(x).squeeze(1) + (f * c).sum(1), f


def networks_available() -> bool:
    try:
        import langfree.families.lafite.networks  # noqa: F401
    except ImportError:
        return False
    return True


def use_stand_ins_if_needed(monkeypatch) -> None:
    """Swap in the stand-in networks while the real ones are not written yet."""
    if networks_available():
        return
    from langfree.families.lafite import family

    def build(config):
        G = StandInGenerator(config.z_dim, config.c_dim, config.w_dim, config.resolution)
        D = StandInDiscriminator(config.c_dim, config.resolution)
        return G, D

    monkeypatch.setattr(family, "build_networks", build)


def fake_batch(config: LafiteConfig, B: int = 4, captions: bool = True, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    R, D = config.resolution, config.c_dim
    return {
        "image": torch.rand(B, 3, R, R, generator=g) * 2 - 1,
        "image_emb": F.normalize(torch.randn(B, D, generator=g), dim=-1),
        "text_emb": (F.normalize(torch.randn(B, D, generator=g), dim=-1) if captions
                     else torch.zeros(B, D)),
        "has_caption": torch.full((B,), captions),
        "index": torch.arange(B),
    }


def tiny_small_clip(path, embed_dim: int = 16, image_size: int = 8):
    """A random-weight langfree small-CLIP directory (loads through load_encoder(path))."""
    from langfree.encoders.small_clip import (
        build_model,
        save_small_clip,
        small_clip_config,
    )

    torch.manual_seed(0)
    cfg = small_clip_config(embed_dim=embed_dim, width=32, vision_layers=1, text_layers=1,
                            patch_size=4, image_size=image_size, context_length=16)
    save_small_clip(build_model(cfg), cfg, path)
    return path


# the tiny networks the CLI tests train (no preset: the paper defaults shrunk with --set)
TINY_SETS = ["z_dim=8", "w_dim=16", "channel_base=128", "channel_max=8", "mapping_layers=1",
             "mbstd_group_size=2", "ema_kimg=0.01"]
