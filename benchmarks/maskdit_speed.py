"""MaskDiT speed on this CPU (never a test): masked vs unmasked training steps, sampling
throughput against steps, and training-step FLOP utilisation against the GEMM peak measured in
the same run.

    .venv/bin/python benchmarks/maskdit_speed.py [--threads 1] [--batch 32] [--reps 5]

The masked/unmasked comparison runs at 64 tokens (REFERENCE §3: width 256, depth 6, batch 32;
masking gives nothing at 16 tokens) with the two alternated so machine load hits both alike.
Last lines: ``masked/unmasked: X`` (target <= 0.6) and ``flop utilisation: X``.
"""

from __future__ import annotations

import argparse
import time

import torch

from langfree.families.base import adam
from langfree.families.maskdit.loss import maskdit_loss
from langfree.families.maskdit.networks import EDMDenoiser, MaskDiT
from langfree.families.maskdit.sampler import edm_heun, seeded_noise


def network(tokens_side: int, hidden: int, depth: int, decoder: int, cond_dim: int = 512):
    torch.manual_seed(0)
    net = MaskDiT(input_size=2 * tokens_side, in_channels=4, cond_dim=cond_dim, hidden=hidden,
                  depth=depth, heads=hidden // 64, patch=2, decoder_hidden=decoder,
                  decoder_depth=2 if decoder else 0, decoder_heads=max(decoder // 64, 1))
    return EDMDenoiser(net, 0.5)


def step_time(den, opt, batch, ratio, reps):
    x, c = torch.randn(batch, 4, den.model.input_size, den.model.input_size) * 0.5, torch.randn(batch, 512)

    def step():
        loss, _ = maskdit_loss(den, x, c, mask_ratio=ratio)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    t = time.perf_counter()
    for _ in range(reps):
        step()
    return (time.perf_counter() - t) / reps


def block_flops(tokens: int, d: int, mlp: float = 4.0) -> float:
    """Forward FLOPs of one DiT block on ``tokens`` tokens (qkv, attention, proj, MLP)."""
    linear = 2 * tokens * d * (3 * d + d + 2 * mlp * d)
    attention = 2 * 2 * tokens * tokens * d
    return linear + attention


def train_flops(den, batch: int, ratio: float) -> float:
    """Forward + backward (3×) FLOPs of one training step, blocks only (they dominate)."""
    m = den.model
    keep = int(m.tokens * (1 - ratio))
    d = m.blocks[0].attn.qkv.in_features
    fl = len(m.blocks) * block_flops(keep, d)
    if m.decoder_depth:
        dd = m.decoder_blocks[0].attn.qkv.in_features
        fl += len(m.decoder_blocks) * block_flops(m.tokens, dd)
    return 3 * batch * fl


def gemm_peak() -> float:
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(10):
            a @ b
        best = min(best, (time.perf_counter() - t) / 10)
    return 2 * 1024**3 / best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}  batch {args.batch}")

    den = network(8, 256, 6, 128)  # 64 tokens
    opt = adam(den.parameters(), lr=1e-4)  # the engine's (fused) AdamW
    masked, unmasked = [], []
    for _ in range(args.rounds):  # alternate: load changes hit both
        masked.append(step_time(den, opt, args.batch, 0.5, args.reps))
        unmasked.append(step_time(den, opt, args.batch, 0.0, args.reps))
    tm, tu = min(masked), min(unmasked)
    print(f"64 tokens, width 256, depth 6, decoder 128x2: masked {tm:.3f} s/step, "
          f"unmasked {tu:.3f} s/step")
    den16 = network(4, 256, 6, 128)  # 16 tokens
    opt16 = adam(den16.parameters(), lr=1e-4)
    m16 = min(step_time(den16, opt16, args.batch, 0.5, args.reps) for _ in range(2))
    u16 = min(step_time(den16, opt16, args.batch, 0.0, args.reps) for _ in range(2))
    print(f"16 tokens: masked {m16:.3f} s/step, unmasked {u16:.3f}  (ratio {m16 / u16:.2f})")

    den.eval()
    n = 32
    cond = torch.nn.functional.normalize(torch.randn(n, 512), dim=1)
    for steps in (10, 20, 40):
        for guidance in (1.0, 3.0):  # guidance != 1 runs the null half in the same batch
            t = time.perf_counter()
            edm_heun(den, seeded_noise(list(range(n)), (4, 16, 16)), cond, steps=steps,
                     guidance_scale=guidance)
            dt = time.perf_counter() - t
            print(f"sampling 64 tokens, {steps} Heun steps, guidance {guidance:g}: "
                  f"{n / dt:.2f} images/s ({n} per batch)")
    den.train()

    peak = gemm_peak()
    util = train_flops(den, args.batch, 0.5) / tm / peak
    print(f"GEMM peak {peak / 1e9:.1f} GFLOP/s; masked step {train_flops(den, args.batch, 0.5) / tm / 1e9:.1f} GFLOP/s")
    print(f"masked/unmasked: {tm / tu:.2f}")
    print(f"flop utilisation: {util:.2f}")


if __name__ == "__main__":
    main()
