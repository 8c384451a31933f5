"""Codebook usage: perplexity, dead share, and re-initialising dead codes.

A VQ codebook trained from scratch loses codes: entries no encoder output is near stop getting
gradients and stay dead for good (a known VQ-VAE failure; taming's ImageNet f16-16384 model uses
under 1 000 of its codes). The remedy used here (as in Jukebox / "random restarts"): every
``dead_check`` steps, each code unused for ``dead_after`` steps is replaced by a randomly chosen
encoder output z_e of the current batch, which is by construction in the region the encoder uses.

``CodebookMonitor`` is its own module (not a buffer of the quantiser) so that the VQGAN state
dict keeps taming's names exactly; it is saved with the resumable state.

Multi-process: each rank sees its own batch, so usage is combined first (``last_used`` is
all-reduced with MAX: a code used on any rank is alive), every rank then takes the same reset
decision, and the re-drawn rows are broadcast from rank 0 so the codebooks stay identical.
(Written for torchrun/gloo; tested on one process only.)
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def perplexity(codes: torch.Tensor, n_embed: int) -> torch.Tensor:
    """exp(entropy) of the code histogram of ``codes`` (any shape): 1 = one code, n = uniform."""
    p = torch.bincount(codes.flatten(), minlength=n_embed).float()
    p = p / p.sum().clamp_min(1)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())


class CodebookMonitor(nn.Module):
    """Tracks, per code, the last step it was used; resets codes idle for ``dead_after`` steps."""

    def __init__(self, n_embed: int, dead_after: int, dead_check: int) -> None:
        super().__init__()
        self.dead_after, self.dead_check = dead_after, dead_check
        self.register_buffer("last_used", torch.zeros(n_embed, dtype=torch.int64))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))

    def dead(self) -> torch.Tensor:
        """[n_embed] bool: codes not used for ``dead_after`` steps."""
        return (self.step - self.last_used) >= self.dead_after

    @torch.no_grad()
    def update(self, codes: torch.Tensor, z_e: torch.Tensor, embedding: torch.Tensor
               ) -> dict[str, torch.Tensor]:
        """Record ``codes`` [B, N] of this step; maybe reset dead rows of ``embedding`` [n, D]
        (in place, from random rows of ``z_e`` [B, D, h, w]). Returns stats for the tick line."""
        self.step += 1
        self.last_used[codes.flatten().unique()] = self.step
        distributed = dist.is_available() and dist.is_initialized()
        if distributed:
            dist.all_reduce(self.last_used, op=dist.ReduceOp.MAX)
        dead = self.dead()
        stats = {"perplexity": perplexity(codes, len(self.last_used)),
                 "dead_share": dead.float().mean()}
        if self.dead_check > 0 and int(self.step) % self.dead_check == 0 and dead.any():
            idx = dead.nonzero().squeeze(1)
            pool = z_e.detach().permute(0, 2, 3, 1).reshape(-1, z_e.shape[1])  # (B*h*w, D)
            pick = torch.randint(len(pool), (len(idx),), device=pool.device)
            embedding[idx] = pool[pick].to(embedding.dtype)
            if distributed:  # rank 0's batch decides the new vectors for everyone
                rows = embedding[idx].contiguous()
                dist.broadcast(rows, src=0)
                embedding[idx] = rows
            self.last_used[idx] = self.step  # give the new codes a fresh grace period
            stats["codes_reset"] = torch.tensor(float(len(idx)))
        return stats
