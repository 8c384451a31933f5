"""MaskDiT networks: a DiT encoder on the visible tokens, a narrow DiT decoder on all tokens,
and the EDM preconditioning that turns the network F into the denoiser D.

Facts from Zheng et al. 2023 (Anima-Lab/MaskDiT, ``models/maskdit.py``) and Peebles & Xie 2023
(facebookresearch/DiT), reimplemented here (REFERENCE.md §3):
  - patch embedding (conv p×p, stride p), fixed 2-D sin-cos positions (MAE's), DiT blocks with
    adaLN-Zero (each block starts as the identity);
  - the encoder runs on the visible tokens only: a random per-sample mask keeps a fixed count
    ``int(T·(1 - ratio))`` of the T tokens, so masking at ratio 0.5 halves the encoder's cost;
  - the decoder maps the encoder width to a narrower one, puts a learned mask token at every
    masked position, adds its own positions and runs a few DiT blocks on all T tokens;
  - the final layer maps every token to p²·C (2·p²·C with a learned sigma, unused by EDM).
Conditioning (the language-free thesis, Jollokim/LanguageFreeFastT2IDiffusion): the class table
of MaskDiT is a bias-free Linear of the L2-normalised CLIP embedding, added to the timestep
embedding. A zero embedding therefore gives exactly zero conditioning: the null condition of
classifier-free guidance.

Legend (paper -> here): x = noisy latent, σ = noise level, c_noise = ln σ / 4, y/c = condition,
T = tokens (h·w / p²), D = encoder width (``hidden``), D' = decoder width (``decoder_hidden``).
Module names follow the official code (``x_embedder``, ``t_embedder``, ``blocks``,
``decoder_layer``, ``decoder_blocks``, ``final_layer``) so that converting an official state dict
is a renaming of one key (``y_embedder.embedding_table`` -> ``cond_embedder``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


@dataclass(frozen=True)
class MaskDiTSize:
    """One row of the size registry: encoder and decoder shapes."""

    hidden: int
    depth: int
    heads: int
    patch: int
    decoder_hidden: int
    decoder_depth: int
    decoder_heads: int


def _sizes() -> dict[str, MaskDiTSize]:
    # Encoders are DiT's (S 384/12/6, B 768/12/12, L 1024/24/16, XL 1152/28/16). The official
    # code hard-codes a 512-wide, 8-deep, 16-head decoder for every size; L and XL keep it. For B
    # and S a 512-wide decoder would be wider than half the encoder, which defeats the point of
    # an asymmetric decoder, so they get half the encoder width (a deliberate deviation).
    enc = {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16)}
    dec = {"S": (192, 8, 6), "B": (384, 8, 12), "L": (512, 8, 16), "XL": (512, 8, 16)}
    return {
        f"MaskDiT-{name}/{p}": MaskDiTSize(*enc[name], p, *dec[name])
        for name in enc
        for p in (2, 4)
    }


MASKDIT_SIZES: dict[str, MaskDiTSize] = _sizes()


# ----------------------------------------------------------------------------------------------
# Embeddings


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos positions: [grid², dim], tokens in raster order.

    The first half of the channels encodes the column, the second the row (MAE builds
    ``meshgrid(w, h)`` and embeds its first plane, the column index, first); each half is
    [sin, cos] of the position times 10000^(-k/(dim/4)), k = 0 .. dim/4 - 1."""
    if dim % 4:
        raise ValueError(f"position embedding width {dim} must be divisible by 4")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))  # [dim/4]
    idx = torch.arange(grid, dtype=torch.float64)
    row, col = torch.meshgrid(idx, idx, indexing="ij")  # [grid, grid] each

    def one_d(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1, 1) * omega[None]  # [grid², dim/4]
        return torch.cat([out.sin(), out.cos()], dim=1)  # [grid², dim/2]

    return torch.cat([one_d(col), one_d(row)], dim=1).float()  # [grid², dim]


class TimestepEmbedder(nn.Module):
    """c_noise (a real number per sample) -> [N, D] through 256 sinusoidal frequencies and an MLP."""

    def __init__(self, hidden: int, frequencies: int = 256):
        super().__init__()
        self.frequencies = frequencies
        self.mlp = nn.Sequential(
            nn.Linear(frequencies, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.frequencies // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / half)  # [F/2]
        args = t.float()[:, None] * freqs[None]  # (N, F/2)
        emb = torch.cat([args.cos(), args.sin()], dim=1)  # (N, F): cos first, as GLIDE/DiT
        return self.mlp(emb)  # (N, D)


class PatchEmbed(nn.Module):
    """[N, C, H, W] -> [N, T, D], T = (H/p)·(W/p) in raster order (a p×p conv of stride p)."""

    def __init__(self, channels: int, hidden: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, hidden, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, C, H, W) -> (N, T, D)


# ----------------------------------------------------------------------------------------------
# Blocks


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # x·(1 + scale) + shift in one pass over the activations (addcmul), not two
    return torch.addcmul(shift[:, None], x, 1 + scale[:, None])  # (N, T, D), (N, D) affine


# Up to this many tokens, attention is two matrix products and a softmax: on this CPU PyTorch's
# fused SDPA kernel is slower there (2 threads: 2.4x at 16 tokens and 1.5x at 64, forward and
# backward; 1 thread: 1.1-1.3x); past it the fused kernel's memory and speed win.
SHORT_ATTENTION = 64


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q·kᵀ/√d)·v over (N, H, T, d); no mask, no dropout (as MaskDiT's)."""
    if q.shape[-2] > SHORT_ATTENTION:
        return F.scaled_dot_product_attention(q, k, v)
    return torch.matmul(torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2)).softmax(-1), v)


_GELU_A = 2 * math.sqrt(2 / math.pi)  # 0.5·(1 + tanh(u)) = sigmoid(2u), u = √(2/π)(x + 0.044715x³)
_GELU_B = _GELU_A * 0.044715


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """DiT's tanh-approximate GELU. Without autograd it is x·sigmoid(2u), in place on one new
    tensor: ~2x faster than PyTorch's tanh kernel on this CPU, the same values to 5e-7; with
    autograd PyTorch's kernel (its fused backward beats the identity's)."""
    if x.requires_grad and torch.is_grad_enabled():
        return F.gelu(x, approximate="tanh")
    s = x * x
    return s.mul_(_GELU_B).add_(_GELU_A).mul_(x).sigmoid_().mul_(x)


class Attention(nn.Module):
    """Multi-head self-attention (fused qkv with bias, as timm's, so official weights load)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads; pick a divisor")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = rearrange(self.qkv(x), "n t (k h d) -> k n h t d", k=3, h=self.heads)  # (3,N,H,T,d)
        out = attention(qkv[0], qkv[1], qkv[2])  # (N, H, T, d)
        return self.proj(rearrange(out, "n h t d -> n t (h d)"))  # (N, T, D)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # GELU(tanh): DiT's choice
        return self.fc2(gelu_tanh(self.fc1(x)))  # (N, T, D) -> (N, T, 4D) -> (N, T, D)


class DiTBlock(nn.Module):
    """Pre-norm transformer block whose norms are modulated by c (adaLN); the gates are zero at
    init (adaLN-Zero), so the block starts as the identity."""

    def __init__(self, dim: int, cond_width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_width, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        mod = self.adaLN_modulation(c).chunk(6, dim=1)  # 6 × (N, D)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mod
        # gated residuals x + g·f(x), each one addcmul (one pass over the activations)
        x = torch.addcmul(x, gate_a[:, None], self.attn(modulate(self.norm1(x), shift_a, scale_a)))
        return torch.addcmul(x, gate_m[:, None], self.mlp(modulate(self.norm2(x), shift_m, scale_m)))


class ModulatedLinear(nn.Module):
    """adaLN (shift, scale) then a Linear: the decoder's entry layer and the final layer."""

    def __init__(self, dim: int, cond_width: int, out: int, norm_name: str):
        super().__init__()
        self.norm_name = norm_name  # the official names differ (norm_decoder / norm_final)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, out)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_width, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)  # 2 × (N, D)
        return self.linear(modulate(self.norm(x), shift, scale))  # (N, T, D) -> (N, T, out)


# ----------------------------------------------------------------------------------------------
# Masking


@dataclass
class TokenMask:
    """A per-sample random mask over T tokens, keeping the same count in every sample.

    keep:    [N, T_keep] int64, indices of the visible tokens (the encoder's input order)
    restore: [N, T] int64, the inverse permutation (visible tokens first, then masked ones)
    masked:  [N, T] float32, 1 where the token is masked (MAE's convention), 0 where visible
    """

    keep: torch.Tensor
    restore: torch.Tensor
    masked: torch.Tensor

    @property
    def visible(self) -> torch.Tensor:
        return 1.0 - self.masked  # [N, T]


def keep_count(tokens: int, ratio: float) -> int:
    """Visible tokens per sample at mask ``ratio`` (official: ``int(T·(1 - ratio))``)."""
    return int(tokens * (1 - ratio))


def random_mask(batch: int, tokens: int, ratio: float, device=None,
                generator: torch.Generator | None = None) -> TokenMask:
    """MAE-style masking by argsort of uniform noise; the global RNG unless ``generator``."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio {ratio} must be in [0, 1)")
    n_keep = keep_count(tokens, ratio)
    noise = torch.rand(batch, tokens, generator=generator, device=device)  # [N, T]
    shuffle = noise.argsort(dim=1)  # small noise = kept
    restore = shuffle.argsort(dim=1)  # [N, T]
    masked = torch.ones(batch, tokens, device=device)
    masked[:, :n_keep] = 0
    masked = masked.gather(1, restore)  # back to raster order
    return TokenMask(keep=shuffle[:, :n_keep], restore=restore, masked=masked)


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return x.gather(1, idx[..., None].expand(-1, -1, x.shape[2]))  # (N, T, D) -> (N, T_idx, D)


def unmask_tokens(x: torch.Tensor, mask: TokenMask, fill: torch.Tensor) -> torch.Tensor:
    """Visible tokens [N, T_keep, D] + a fill token [1, 1, D] -> all tokens [N, T, D]."""
    n, t = mask.restore.shape
    fill = fill.expand(n, t - x.shape[1], -1)  # (N, T - T_keep, D)
    return gather_tokens(torch.cat([x, fill], dim=1), mask.restore)  # (N, T, D), raster order


# ----------------------------------------------------------------------------------------------
# The network F and the denoiser D


class MaskDiT(nn.Module):
    """F(c_in·x, c_noise, y, mask): [N, C, H, W] -> [N, C_out, H, W] (C_out = C, or 2C with
    ``learn_sigma``). ``mask`` None runs on all tokens (sampling, the unmasked fine-tune).
    ``decoder_depth`` 0 gives plain DiT (masked outputs are zero, as the official code)."""

    def __init__(self, *, input_size: int, in_channels: int, cond_dim: int, hidden: int,
                 depth: int, heads: int, patch: int, decoder_hidden: int = 0,
                 decoder_depth: int = 0, decoder_heads: int = 1, mlp_ratio: float = 4.0,
                 learn_sigma: bool = False):
        super().__init__()
        if input_size % patch:
            raise ValueError(f"latent size {input_size} is not divisible by patch {patch}")
        self.input_size, self.in_channels, self.patch = input_size, in_channels, patch
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.grid = input_size // patch
        self.tokens = self.grid**2
        self.x_embedder = PatchEmbed(in_channels, hidden, patch)
        self.t_embedder = TimestepEmbedder(hidden)
        self.cond_embedder = nn.Linear(cond_dim, hidden, bias=False)  # bias-free: 0 -> 0
        # Fixed positions are buffers, not parameters (the official code keeps them as frozen
        # parameters, so its parameter count includes them: see official_parameter_count).
        self.register_buffer("pos_embed", sincos_2d(hidden, self.grid)[None], persistent=False)
        self.blocks = nn.ModuleList(DiTBlock(hidden, hidden, heads, mlp_ratio) for _ in range(depth))
        self.decoder_depth = decoder_depth
        final_width = hidden
        if decoder_depth > 0:
            self.decoder_layer = ModulatedLinear(hidden, hidden, decoder_hidden, "norm_decoder")
            self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_hidden))
            self.register_buffer("decoder_pos_embed", sincos_2d(decoder_hidden, self.grid)[None],
                                 persistent=False)
            self.decoder_blocks = nn.ModuleList(
                DiTBlock(decoder_hidden, hidden, decoder_heads, mlp_ratio)
                for _ in range(decoder_depth)
            )
            final_width = decoder_hidden
        self.final_layer = ModulatedLinear(final_width, hidden, patch * patch * self.out_channels,
                                           "norm_final")
        self.initialize_weights()

    def initialize_weights(self) -> None:
        # DiT's init: xavier for every Linear (and the patch conv seen as a Linear), N(0, 0.02)
        # for the timestep MLP and the condition map, and zeros for every adaLN modulation and the
        # output layers, so each block (and the decoder entry) starts as the identity / zero.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.cond_embedder.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        zero = [b.adaLN_modulation[-1] for b in self.blocks]
        zero += [self.final_layer.adaLN_modulation[-1], self.final_layer.linear]
        if self.decoder_depth > 0:
            zero += [b.adaLN_modulation[-1] for b in self.decoder_blocks]
            zero += [self.decoder_layer.adaLN_modulation[-1], self.decoder_layer.linear]
            nn.init.normal_(self.mask_token, std=0.02)  # MAE's
        for lin in zero:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def condition(self, c_noise: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """c = t_emb(c_noise) + W·normalize(y); y [N, cond_dim], zero rows = null condition."""
        return self.t_embedder(c_noise) + self.cond_embedder(F.normalize(y, dim=1))  # (N, D)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, y: torch.Tensor,
                mask: TokenMask | None = None) -> torch.Tensor:
        n, ch, h, w = x.shape
        if (ch, h, w) != (self.in_channels, self.input_size, self.input_size):
            raise ValueError(f"input [N, {ch}, {h}, {w}] does not match the network's "
                             f"[N, {self.in_channels}, {self.input_size}, {self.input_size}]")
        tok = self.x_embedder(x) + self.pos_embed  # (N, T, D)
        if mask is not None:
            tok = gather_tokens(tok, mask.keep)  # (N, T_keep, D): the encoder sees these only
        c = self.condition(c_noise, y)  # (N, D)
        for block in self.blocks:
            tok = block(tok, c)  # (N, T_keep, D)
        if self.decoder_depth > 0:
            tok = self.decoder_layer(tok, c)  # (N, T_keep, D')
            if mask is not None:
                tok = unmask_tokens(tok, mask, self.mask_token.to(tok.dtype))  # (N, T, D')
            tok = tok + self.decoder_pos_embed  # (N, T, D')
            for block in self.decoder_blocks:
                tok = block(tok, c)  # (N, T, D')
        out = self.final_layer(tok, c)  # (N, T or T_keep, p²·C_out)
        if self.decoder_depth == 0 and mask is not None:
            out = unmask_tokens(out, mask, out.new_zeros(1, 1, out.shape[2]))  # (N, T, p²·C_out)
        return rearrange(out, "n (gh gw) (p q c) -> n c (gh p) (gw q)",
                         gh=self.grid, p=self.patch, q=self.patch)  # (N, C_out, H, W)


class EDMDenoiser(nn.Module):
    """D(x; σ, y) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x, ln σ / 4, y) (Karras et al. 2022, Table 1).

    x: [N, C, H, W] noisy latents (data scaled to std ≈ σ_data); sigma: [N] > 0; y: [N, cond_dim].
    Returns the denoised latents [N, C, H, W] (the learned-sigma channels, if any, dropped)."""

    def __init__(self, model: MaskDiT, sigma_data: float = 0.5):
        super().__init__()
        self.model = model
        self.sigma_data = sigma_data

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor,
                mask: TokenMask | None = None) -> torch.Tensor:
        s = sigma.to(x.dtype).reshape(-1, 1, 1, 1)  # (N, 1, 1, 1)
        sd2 = self.sigma_data**2
        c_skip = sd2 / (s**2 + sd2)
        c_out = s * self.sigma_data / (s**2 + sd2).sqrt()
        c_in = 1 / (s**2 + sd2).sqrt()
        c_noise = s.log().flatten() / 4  # (N,)
        f = self.model(c_in * x, c_noise, y, mask)[:, : x.shape[1]]  # (N, C, H, W)
        return c_skip * x + c_out * f  # (N, C, H, W)


def build_network(size: MaskDiTSize, *, input_size: int, in_channels: int, cond_dim: int,
                  learn_sigma: bool = False, use_decoder: bool = True) -> MaskDiT:
    """A MaskDiT from a registry row (``MASKDIT_SIZES['MaskDiT-XL/2']``)."""
    return MaskDiT(input_size=input_size, in_channels=in_channels, cond_dim=cond_dim,
                   hidden=size.hidden, depth=size.depth, heads=size.heads, patch=size.patch,
                   decoder_hidden=size.decoder_hidden if use_decoder else 0,
                   decoder_depth=size.decoder_depth if use_decoder else 0,
                   decoder_heads=size.decoder_heads, learn_sigma=learn_sigma)


def official_parameter_count(net: MaskDiT) -> int:
    """The count the official ``train.py`` prints: every parameter plus the fixed position
    tables, which it stores as frozen parameters and we store as buffers."""
    extra = net.pos_embed.numel()
    if net.decoder_depth > 0:
        extra += net.decoder_pos_embed.numel()
    return sum(p.numel() for p in net.parameters()) + extra


def denoiser_from_config(cfg) -> EDMDenoiser:
    """The EDM denoiser a ``MaskDiTConfig`` describes (duck-typed to keep this file free of the
    config module)."""
    model = MaskDiT(input_size=cfg.latent_size, in_channels=cfg.latent_channels,
                    cond_dim=cfg.cond_dim, hidden=cfg.hidden, depth=cfg.depth, heads=cfg.heads,
                    patch=cfg.patch, decoder_hidden=cfg.decoder_hidden,
                    decoder_depth=cfg.decoder_depth, decoder_heads=cfg.decoder_heads,
                    mlp_ratio=cfg.mlp_ratio, learn_sigma=cfg.learn_sigma)
    return EDMDenoiser(model, cfg.sigma_data)
