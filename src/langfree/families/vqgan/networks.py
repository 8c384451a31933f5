"""VQGAN (Esser et al. 2021) with taming-transformers' module and parameter names.

The names are the contract: a taming ``VQModel`` state_dict (minus its training-only ``loss.*``)
loads into ``VQGAN`` as is (``convert.py``), and ``test_official_taming_*`` checks the codes and
reconstructions against the official modules. Layer facts (REFERENCE §4): GroupNorm(32, eps
1e-6), swish, downsampling by a (0,1,0,1) zero pad then a stride-2 3×3 conv, nearest upsampling
then a 3×3 conv, one ResNet block more per decoder level than per encoder level, attention at the
resolutions listed in ``attn_resolutions``.

Shapes: image x [B, 3, R, R] in [-1, 1]; z [B, embed_dim, h, w] with h = R / 2**(len(ch_mult)-1);
codes [B, h*w] int64 in [0, n_embed), row-major (the transformer's image-token order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from langfree.families.vqgan.config import VQGANConfig


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """norm → swish → conv, twice, plus a 1×1 ``nin_shortcut`` when the width changes."""

    def __init__(self, c_in: int, c_out: int, dropout: float, groups: int = 32) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in, groups), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = _norm(c_out, groups), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        if c_in != c_out:
            self.nin_shortcut = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H·W positions, 1×1 conv projections."""

    def __init__(self, c: int, groups: int = 32) -> None:
        super().__init__()
        self.norm = _norm(c, groups)
        self.q, self.k, self.v = (nn.Conv2d(c, c, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[2:]
        h = self.norm(x)
        q, k, v = (rearrange(f(h), "b c h w -> b 1 (h w) c") for f in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v)  # (B, 1, HW, C), scale C**-0.5
        return x + self.proj_out(rearrange(a, "b 1 (h w) c -> b c h w", h=H, w=W))


class Downsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric pad: (H, W) -> (H/2, W/2)


class Upsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _level(blocks: list[nn.Module], attns: list[nn.Module]) -> nn.Module:
    """A bare container, so names read ``down.{i}.block.{j}`` / ``down.{i}.attn.{j}``."""
    level = nn.Module()
    level.block, level.attn = nn.ModuleList(blocks), nn.ModuleList(attns)
    return level


def _mid(c: int, dropout: float, groups: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1, mid.attn_1, mid.block_2 = (
        ResnetBlock(c, c, dropout, groups), AttnBlock(c, groups), ResnetBlock(c, c, dropout, groups))
    return mid


def _run_mid(mid: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(h)))


class Encoder(nn.Module):
    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        ch, mult, res = cfg.ch, (1, *cfg.ch_mult), cfg.resolution
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        self.down = nn.ModuleList()
        for i in range(len(cfg.ch_mult)):
            c_in, c_out = ch * mult[i], ch * mult[i + 1]
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(c_in, c_out, cfg.dropout, cfg.norm_groups))
                c_in = c_out
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(c_out, cfg.norm_groups))
            level = _level(blocks, attns)
            if i != len(cfg.ch_mult) - 1:
                level.downsample = Downsample(c_out)
                res //= 2
            self.down.append(level)
        self.mid = _mid(c_in, cfg.dropout, cfg.norm_groups)
        self.norm_out = _norm(c_in, cfg.norm_groups)
        self.conv_out = nn.Conv2d(c_in, cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # (B, ch, R, R)
        for level in self.down:
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)  # (B, C, H/2, W/2)
        h = _run_mid(self.mid, h)  # (B, C_top, h, w)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, z_channels, h, w)


class Decoder(nn.Module):
    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        ch, n = cfg.ch, len(cfg.ch_mult)
        c_in, res = ch * cfg.ch_mult[-1], cfg.resolution // 2 ** (n - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, c_in, 3, padding=1)
        self.mid = _mid(c_in, cfg.dropout, cfg.norm_groups)
        levels: list[nn.Module] = []
        for i in reversed(range(n)):  # built top-down, stored by level index like the encoder
            c_out = ch * cfg.ch_mult[i]
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(c_in, c_out, cfg.dropout, cfg.norm_groups))
                c_in = c_out
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(c_out, cfg.norm_groups))
            level = _level(blocks, attns)
            if i != 0:
                level.upsample = Upsample(c_out)
                res *= 2
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(c_in, cfg.norm_groups)
        self.conv_out = nn.Conv2d(c_in, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = _run_mid(self.mid, self.conv_in(z))  # (B, C_top, h, w)
        for level in reversed(self.up):
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)  # (B, C, 2H, 2W)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 3, R, R), unbounded


class VectorQuantizer(nn.Module):
    """Nearest-codebook quantisation with a straight-through gradient (van den Oord et al. 2017).

    Loss = ||sg[z_e] - e||² (codebook) + β·||z_e - sg[e]||² (commitment), β = 0.25. taming's
    ``VectorQuantizer2(legacy=True)``, which its VQModel uses, puts β on the codebook term
    instead (their comment calls it a bug kept for compatibility); ``legacy_beta=True``
    reproduces that for fine-tuning official checkpoints. Codebook init U(-1/n, 1/n) as taming.

    ``l2=True``: ViT-VQGAN's l2-normalised codes (Yu et al. 2022, §3.2): z_e and every code are
    projected onto the unit sphere before the lookup, so the nearest code is the one of highest
    cosine and z_q is a unit vector; the parameters (and their names) are unchanged, only the
    geometry. Codes whose norm grew apart can no longer win every lookup, which keeps many more
    codes in use from scratch (their Table 2).
    """

    def __init__(self, n_embed: int, embed_dim: int, beta: float, legacy_beta: bool,
                 l2: bool = False) -> None:
        super().__init__()
        self.n_embed, self.embed_dim, self.beta, self.legacy_beta, self.l2 = (
            n_embed, embed_dim, beta, legacy_beta, l2)
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)

    def _unit(self, v: torch.Tensor, dim: int) -> torch.Tensor:
        return F.normalize(v, dim=dim) if self.l2 else v

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, D, h, w] -> nearest code per position [B, h*w] int64."""
        flat = self._unit(rearrange(z, "b d h w -> (b h w) d"), 1)
        e = self._unit(self.embedding.weight, 1)  # (n, D)
        # ||z - e||² = ||z||² + ||e||² - 2 z·e; ||z||² does not change the argmin but is kept so
        # ties resolve like taming's
        dist = flat.square().sum(1, keepdim=True) + e.square().sum(1) - 2 * flat @ e.t()
        return dist.argmin(1).view(z.shape[0], -1)  # (B, h*w)

    def lookup(self, codes: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """codes [B, h*w] -> z_q [B, D, h, w]."""
        return rearrange(self._unit(self.embedding(codes), -1), "b (h w) d -> b d h w", h=h, w=w)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z [B, D, h, w] -> (z_q straight-through [B, D, h, w], vq loss scalar, codes [B, h*w])."""
        codes = self.codes(z)
        z = self._unit(z, 1)
        z_q = self.lookup(codes, z.shape[2], z.shape[3])
        codebook = (z_q - z.detach()).square().mean()
        commit = (z_q.detach() - z).square().mean()
        loss = (self.beta * codebook + commit) if self.legacy_beta else (
            codebook + self.beta * commit)
        return z + (z_q - z).detach(), loss, codes


class VQGAN(nn.Module):
    """encoder → quant_conv → quantize → post_quant_conv → decoder (taming ``VQModel`` names)."""

    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim, cfg.beta, cfg.legacy_beta,
                                        cfg.l2_codes)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)
        self.decoder = Decoder(cfg)

    @property
    def grid(self) -> int:
        """Tokens per side: R / 2**(levels-1)."""
        return self.config.resolution // 2 ** (len(self.config.ch_mult) - 1)

    def encode_z(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, R, R] in [-1, 1] -> pre-quantisation z_e [B, embed_dim, h, w]."""
        return self.quant_conv(self.encoder(x))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, R, R] in [-1, 1] -> codes [B, h*w] int64."""
        return self.quantize.codes(self.encode_z(x))

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z_q))  # (B, 3, R, R)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, h*w] -> image [B, 3, R, R] (unclamped; clamp to [-1, 1] for display)."""
        side = round(codes.shape[1] ** 0.5)
        if side * side != codes.shape[1]:
            raise ValueError(f"codes hold {codes.shape[1]} tokens per image, not a square grid")
        return self.decode(self.quantize.lookup(codes, side, side))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """x -> (reconstruction [B,3,R,R], vq loss, codes [B, h*w], z_e [B, D, h, w])."""
        z_e = self.encode_z(x)
        z_q, vq_loss, codes = self.quantize(z_e)
        return self.decode(z_q), vq_loss, codes, z_e
