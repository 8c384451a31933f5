"""A small KL autoencoder (Kingma & Welling 2014; the LDM "kl-f<k>" shape of Rombach et al. 2022,
reimplemented small): conv encoder -> diagonal Gaussian posterior over a C×(H/k)×(W/k) latent,
conv decoder back to pixels in [-1, 1], and a PatchGAN discriminator (Isola et al. 2017) for the
optional adversarial term.

Shapes: image x [N, 3, H, W] in [-1, 1]; posterior mean / std [N, C, H/k, W/k], k = 2^(levels-1)
with ``levels = len(channel_mult)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, ch // 4) if ch >= 8 else 1, ch, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (N, Cout, H, W)
        h = self.conv2(F.silu(self.norm2(h)))  # (N, Cout, H, W)
        return self.skip(x) + h


@dataclass
class DiagonalGaussian:
    """q(z|x) = N(mean, std²) per latent element; log-variance clamped to [-30, 20] (as LDM)."""

    mean: torch.Tensor
    logvar: torch.Tensor

    def __post_init__(self) -> None:
        self.logvar = self.logvar.clamp(-30.0, 20.0)

    @property
    def std(self) -> torch.Tensor:
        return (0.5 * self.logvar).exp()

    def sample(self) -> torch.Tensor:
        return self.mean + self.std * torch.randn_like(self.mean)  # global RNG (the loop's)

    def kl(self) -> torch.Tensor:
        """KL(q ‖ N(0, I)) summed over latent elements: [N]."""
        return 0.5 * (self.mean.square() + self.logvar.exp() - 1 - self.logvar).flatten(1).sum(1)


class Encoder(nn.Module):
    def __init__(self, width: int, channel_mult: tuple[int, ...], latent_channels: int):
        super().__init__()
        chans = [width * m for m in channel_mult]
        self.conv_in = nn.Conv2d(3, chans[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, ch in enumerate(chans):
            layers.append(ResBlock(chans[max(i - 1, 0)], ch))
            if i < len(chans) - 1:
                layers.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))  # halve H, W
        self.down = nn.Sequential(*layers)
        self.mid = ResBlock(chans[-1], chans[-1])
        self.norm_out = norm(chans[-1])
        self.conv_out = nn.Conv2d(chans[-1], 2 * latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> DiagonalGaussian:
        h = self.mid(self.down(self.conv_in(x)))  # (N, W·m[-1], H/k, W/k)
        mean, logvar = self.conv_out(F.silu(self.norm_out(h))).chunk(2, dim=1)  # 2 × (N, C, h, w)
        return DiagonalGaussian(mean, logvar)


class Decoder(nn.Module):
    def __init__(self, width: int, channel_mult: tuple[int, ...], latent_channels: int):
        super().__init__()
        chans = [width * m for m in reversed(channel_mult)]
        self.conv_in = nn.Conv2d(latent_channels, chans[0], 3, padding=1)
        self.mid = ResBlock(chans[0], chans[0])
        layers: list[nn.Module] = []
        for i, ch in enumerate(chans):
            layers.append(ResBlock(chans[max(i - 1, 0)], ch))
            if i < len(chans) - 1:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                           nn.Conv2d(ch, ch, 3, padding=1)]  # double H, W
        self.up = nn.Sequential(*layers)
        self.norm_out = norm(chans[-1])
        self.conv_out = nn.Conv2d(chans[-1], 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.up(self.mid(self.conv_in(z)))  # (N, W·m[0], H, W)
        return self.conv_out(F.silu(self.norm_out(h)))  # (N, 3, H, W), unbounded (≈ [-1, 1])


class KLAutoencoder(nn.Module):
    """encode(x) -> DiagonalGaussian; decode(z) -> image. ``downsample`` = 2^(levels - 1)."""

    def __init__(self, width: int = 64, channel_mult: tuple[int, ...] = (1, 2, 2),
                 latent_channels: int = 4):
        super().__init__()
        self.latent_channels = latent_channels
        self.downsample = 2 ** (len(channel_mult) - 1)
        self.encoder = Encoder(width, channel_mult, latent_channels)
        self.decoder = Decoder(width, channel_mult, latent_channels)
        # running std of posterior means over training (momentum 0.99): 1 / it is the scaling
        # factor that brings latents to unit std (LDM measures it once, 0.18215 for kl-f8)
        self.register_buffer("latent_std", torch.ones(1))  # [1]: sidecar.tensor_digest cannot hash 0-d

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, DiagonalGaussian]:
        post = self.encode(x)
        return self.decode(post.sample()), post  # (N, 3, H, W), posterior


class PatchDiscriminator(nn.Module):
    """PatchGAN: [N, 3, H, W] -> [N, 1, H/2^layers, W/2^layers] real/fake logits per patch."""

    def __init__(self, width: int = 64, layers: int = 3):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(3, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = width
        for i in range(1, layers):
            nxt = width * min(2**i, 8)
            mods += [nn.Conv2d(ch, nxt, 4, 2, 1), norm(nxt), nn.LeakyReLU(0.2)]
            ch = nxt
        mods.append(nn.Conv2d(ch, 1, 3, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
