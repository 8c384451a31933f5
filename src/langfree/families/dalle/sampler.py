"""Autoregressive sampling of image codes: top-k + temperature, classifier-free guidance, KV
cache, per-seed generators; and CLIP reranking of candidates.

Determinism: row i draws its tokens from its own ``torch.Generator`` seeded with ``seeds[i]``
(never the global RNG), and every row's logits depend only on its own text (attention never
mixes rows), so image i depends only on (text i, seed i, options), not on the batch it is in.

Guidance (Ho & Salimans 2021, as DALLE-pytorch's ``cond_scale``): the conditional rows and the
null-text rows run as ONE batch of 2B through the cached transformer; logits = u + s·(c - u).
The batch is a new tensor (``torch.cat``): the caller's text is never written to (DALLE-pytorch
1.6.6 zeroed it in place). s = 1 is exactly unguided: the null rows are skipped.
"""

from __future__ import annotations

import torch

from langfree.families.dalle.config import DalleSampleOptions
from langfree.families.dalle.transformer import DalleTransformer, KVCache


def candidate_seed(seed: int, c: int) -> int:
    """Seed of reranking candidate c of a row: candidate 0 is the row's seed itself (rerank 1 is
    plain sampling); the others are 32-bit hashes of (seed, c). 32 bits because torch's CPU
    generator reads only the low 32 bits of a seed: candidates kept apart above 2**32 (as this
    was first written) all drew the same tokens, so reranking picked among N copies."""
    if c == 0:
        return seed
    import numpy as np

    return int(np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, c]).generate_state(1)[0])


def _top_k_sample(logits: torch.Tensor, options: DalleSampleOptions,
                  gens: list[torch.Generator]) -> torch.Tensor:
    """logits [B, K] -> one code per row [B], each from its own generator."""
    k = max(1, int((1.0 - options.filter_thres) * logits.shape[-1]))
    vals, idx = logits.float().topk(k, dim=-1)  # (B, k)
    probs = torch.softmax(vals / options.temperature, dim=-1).cpu()  # a device sync per step
    pick = torch.stack([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, gens)])
    return idx.gather(1, pick.to(idx.device)).squeeze(1)  # (B,)


@torch.no_grad()
def sample_codes(net: DalleTransformer, text: torch.Tensor, null_text: torch.Tensor,
                 seeds: list[int], options: DalleSampleOptions | None = None,
                 use_cache: bool = True) -> torch.Tensor:
    """text [B, L] ids (not modified), null_text [L] ids, one seed per row -> codes [B, N].

    ``use_cache=False`` recomputes the whole sequence every step (the reference the cache is
    tested against; N× slower)."""
    options = options or DalleSampleOptions()
    B, N = text.shape[0], net.config.image_tokens
    if len(seeds) != B:
        raise ValueError(f"{len(seeds)} seeds for {B} rows: pass one seed per row")
    guided = options.guidance_scale != 1.0
    rows = torch.cat([text, null_text.to(text)[None].expand(B, -1)]) if guided else text.clone()
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    codes = torch.zeros(B, N, dtype=torch.long, device=text.device)
    prefix = net.embed_prefix(rows)  # (R, L+1, D), R = 2B guided else B
    cache = KVCache(len(rows), net.config, text.device, prefix.dtype) if use_cache else None
    h = net.run(prefix, cache)[:, -1]  # (R, D): predicts code 0
    for j in range(N):
        logits = net.to_image(h)  # (R, K)
        if guided:
            cond, null = logits.chunk(2)
            logits = null + options.guidance_scale * (cond - null)
        codes[:, j] = _top_k_sample(logits, options, gens)
        if j == N - 1:
            break
        step = codes[:, j:j + 1].repeat(2, 1) if guided else codes[:, j:j + 1]  # (R, 1)
        if cache is not None:
            h = net.run(net.embed_image(step, j), cache)[:, -1]
        else:
            so_far = codes[:, :j + 1].repeat(2, 1) if guided else codes[:, :j + 1]
            h = net.run(torch.cat([prefix, net.embed_image(so_far)], 1))[:, -1]
    return codes


@torch.no_grad()
def rerank(encoder, images: torch.Tensor, text_emb: torch.Tensor, n: int) -> torch.Tensor:
    """images [B·n, 3, H, W] in [-1, 1] (candidate-major per prompt: prompt b's candidates are
    rows b·n .. b·n+n-1), text_emb [B, D] unit -> index of the best candidate per prompt [B]
    by cosine similarity in the encoder's space (DALL·E §2.5 reranks with CLIP)."""
    img = encoder.encode_image(images).view(text_emb.shape[0], n, -1)  # (B, n, D)
    return torch.einsum("bnd,bd->bn", img, text_emb.to(img)).argmax(1)
