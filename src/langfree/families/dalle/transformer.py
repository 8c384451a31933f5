"""The DALL·E transformer: one causal decoder over [BOS, text, image] (Ramesh et al. 2021, §2.2).

Token layout (legend):
  L = text_len text positions, N = grid² image positions (row-major VQGAN codes);
  text ids in [0, V + L): V BPE tokens, then one pad token per position (``bpe.py``);
  BOS = V + L, its own row of the text embedding;
  image ids in [0, K), K = VQGAN codebook size, a separate embedding.
Positions: text positions (BOS included) are learned 1-D; image positions are learned row +
column embeddings (2-D). Two output heads: text positions predict text ids, image positions
predict image codes, so sampling can never emit a text id inside the image (no logits mask).

Sequence and targets (training): input [BOS, t_0..t_{L-1}, c_0..c_{N-2}] (L + N tokens),
targets [t_0..t_{L-1}, c_0..c_{N-1}].

Language-free (``condition="clip"``, config.py): the prefix is P = ``prefix_tokens`` vectors
W·h + b reshaped to [P, D], h the L2-normalised CLIP embedding [D_clip] (the zero vector for
the null condition, whose prefix is then b alone); no BOS, no text tables, no text head. Input
[p_0..p_{P-1}, c_0..c_{N-2}], targets [c_0..c_{N-1}] read at positions P-1 .. P+N-2. The
projection's bias doubles as the prefix's position embedding (a separate one would add nothing
a bias cannot).

KV cache: ``KVCache`` preallocates [B, H, P + N - 1, Dh] keys/values per layer; the prefix is run
once (L + 1 tokens, causal mask inside it), then one token per step. Without it each of the N
steps re-runs the whole prefix: N× the attention and MLP work (REFERENCE §4 measured 7× on a
tiny model).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from langfree.families.dalle.config import DalleConfig


class KVCache:
    """Keys and values of every layer for positions [0, length), preallocated for the sequence."""

    def __init__(self, batch: int, cfg: DalleConfig, device, dtype=torch.float32) -> None:
        shape = (batch, cfg.heads, cfg.seq_len, cfg.dim // cfg.heads)
        self.k = [torch.empty(shape, device=device, dtype=dtype) for _ in range(cfg.depth)]
        self.v = [torch.empty(shape, device=device, dtype=dtype) for _ in range(cfg.depth)]
        self.length = 0

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's k, v [B, H, n, Dh] after the cached ones; return all so far."""
        end = self.length + k.shape[2]
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, cache: KVCache | None, layer: int) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b t (three h d) -> three b h t d",
                            three=3, h=self.heads)  # each (B, H, n, Dh)
        p = self.dropout if self.training else 0.0
        if cache is None:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            start, n = cache.length, q.shape[2]
            k, v = cache.extend(layer, k, v)  # (B, H, start + n, Dh)
            mask = None
            if n > 1:  # causal inside the new block; all cached positions visible
                mask = (torch.arange(start + n, device=x.device)[None, :]
                        <= torch.arange(start, start + n, device=x.device)[:, None])
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.proj(rearrange(out, "b h t d -> b t (h d)"))  # (B, n, D)


class Block(nn.Module):
    """Pre-LN transformer block (GPT-2 style)."""

    def __init__(self, cfg: DalleConfig) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim)
        self.attn = Attention(cfg.dim, cfg.heads, cfg.attn_dropout)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.dim, cfg.ff_mult * cfg.dim), nn.GELU(),
            nn.Linear(cfg.ff_mult * cfg.dim, cfg.dim), nn.Dropout(cfg.ff_dropout))

    def forward(self, x: torch.Tensor, cache: KVCache | None, layer: int) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache, layer)
        return x + self.mlp(self.ln2(x))


class DalleTransformer(nn.Module):
    def __init__(self, cfg: DalleConfig) -> None:
        super().__init__()
        self.config = cfg
        L, g = cfg.text_len, cfg.image_grid
        if cfg.condition == "clip":
            self.cond_proj = nn.Linear(cfg.clip_dim, cfg.prefix_tokens * cfg.dim)
        else:
            self.bos = cfg.text_vocab + L  # id of BOS in the text embedding
            self.text_emb = nn.Embedding(cfg.text_vocab + L + 1, cfg.dim)  # BPE, pads, BOS
            self.text_pos = nn.Embedding(L + 1, cfg.dim)
        self.image_emb = nn.Embedding(cfg.image_vocab, cfg.dim)
        self.image_row = nn.Embedding(g, cfg.dim)
        self.image_col = nn.Embedding(g, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.ln_f = nn.LayerNorm(cfg.dim)
        if cfg.condition == "text":  # registered here: the text mode's init order is unchanged
            self.to_text = nn.Linear(cfg.dim, cfg.text_vocab + L)  # targets never include BOS
        self.to_image = nn.Linear(cfg.dim, cfg.image_vocab)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        # GPT-2 init: N(0, 0.02) everywhere, zero biases; LayerNorm stays (1, 0)
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    # -- embeddings ---------------------------------------------------------------------------
    def embed_prefix(self, cond: torch.Tensor) -> torch.Tensor:
        """The condition -> prefix embeddings [B, P, D]: text ids [B, L] -> [BOS, text]
        (P = L + 1); clip mode: embeddings [B, D_clip] (unit, or zero = null) -> P tokens."""
        if self.config.condition == "clip":
            return self.embed_clip(cond)
        return self.embed_text(cond)

    def embed_clip(self, h: torch.Tensor) -> torch.Tensor:
        """h [B, D_clip] -> [B, P, D]. Normalised here too (the zero null stays zero)."""
        cfg = self.config
        if h.ndim != 2 or h.shape[1] != cfg.clip_dim or not h.is_floating_point():
            raise ValueError(f"the clip prefix takes float embeddings [B, {cfg.clip_dim}], got "
                             f"{h.dtype} {list(h.shape)}; condition with the encoder the model "
                             "was trained with")
        h = F.normalize(h.to(self.cond_proj.weight.dtype), dim=-1)  # (B, D_clip)
        return rearrange(self.cond_proj(h), "b (p d) -> b p d", p=cfg.prefix_tokens)

    def embed_text(self, text: torch.Tensor) -> torch.Tensor:
        """text [B, L] ids -> [BOS, text] embeddings [B, L + 1, D]."""
        B, L = text.shape
        if L != self.config.text_len:
            raise ValueError(f"text has {L} positions, the model {self.config.text_len}")
        bos = torch.full((B, 1), self.bos, dtype=text.dtype, device=text.device)
        tokens = torch.cat([bos, text], 1)  # (B, L+1), a new tensor: the caller's is untouched
        return self.text_emb(tokens) + self.text_pos.weight[None]

    def embed_image(self, codes: torch.Tensor, start: int = 0) -> torch.Tensor:
        """codes [B, n] at image positions start..start+n-1 -> [B, n, D]."""
        g = self.config.image_grid
        pos = torch.arange(start, start + codes.shape[1], device=codes.device)
        return self.image_emb(codes) + self.image_row(pos // g)[None] + self.image_col(pos % g)[None]

    def run(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Embedded tokens [B, n, D] -> final hidden states [B, n, D] (appending to ``cache``)."""
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        if cache is not None:
            cache.length += x.shape[1]
        return self.ln_f(x)

    def forward(self, cond: torch.Tensor, codes: torch.Tensor
                ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Teacher forcing. cond (text [B, L] ids, or clip embeddings [B, D_clip]), codes
        [B, N] -> (text logits [B, L, V+L] or None in clip mode, image logits [B, N, K]);
        position i predicts token i of its stream."""
        N = self.config.image_tokens
        if codes.shape[1] != N:
            raise ValueError(f"codes have {codes.shape[1]} tokens per image, the model {N}")
        x = torch.cat([self.embed_prefix(cond), self.embed_image(codes[:, :-1])], 1)  # (B, P+N-1, D)
        h = self.run(x)
        P = self.config.prefix_len
        text_logits = self.to_text(h[:, :P - 1]) if self.config.condition == "text" else None
        return text_logits, self.to_image(h[:, P - 1:])
