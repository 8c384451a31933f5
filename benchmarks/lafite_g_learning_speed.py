"""How fast does the LAFITE generator learn to draw edges? (the shapes32 diagnosis)

A CPU-length LAFITE run is ~1 000-2 000 optimiser steps. This script separates "the GAN signal is
weak" from "G itself learns edges slowly": it trains the preset's G by plain pixel regression
(MSE, no D, no CLIP) to reproduce N shapes images, each from its own fixed random unit condition,
and prints, per learning rate, the MSE and the high-frequency energy of the output relative to
the target (mean |Laplacian|; 1.0 = as sharp as the real images, blobs score far below).

    python benchmarks/lafite_g_learning_speed.py --steps 800 --lrs 0.002,0.016

Writes OUT/g_learning_speed.png (top row targets, then one row per lr).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def _highfreq(x):
    import torch
    import torch.nn.functional as F

    k = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]).expand(3, 1, 3, 3)
    return F.conv2d(x, k, padding=1, groups=3).abs().mean()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="shapes32")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lrs", default="0.002,0.016")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("."))
    args = p.parse_args()

    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from langfree.data.shapes import draw_shapes
    from langfree.families.lafite.config import preset
    from langfree.families.lafite.family import build_networks

    torch.set_num_threads(args.threads)
    base = preset(args.preset).replace(c_dim=64)
    data = draw_shapes(args.images, base.resolution, seed=7)
    x = torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 127.5 - 1    # [N, 3, R, R]
    gen = torch.Generator().manual_seed(0)
    cond = F.normalize(torch.randn(args.images, base.c_dim, generator=gen), dim=-1)  # [N, c]
    z = torch.zeros(args.images, base.z_dim)
    target_hf = _highfreq(x[:16]).item()
    rows = [x[:16]]
    print(f"preset {args.preset}: G by pixel MSE on {args.images} images, batch {args.batch}, "
          f"{args.steps} steps")
    for lr in [float(v) for v in args.lrs.split(",")]:
        torch.manual_seed(0)
        G, _ = build_networks(base.replace(lr=lr))
        opt = torch.optim.Adam(G.parameters(), lr=lr, betas=base.betas)
        t0 = time.time()
        for _ in range(args.steps):
            idx = torch.randint(0, args.images, (args.batch,), generator=gen)
            out = G(z[idx], cond[idx] * base.g_condition_gain, noise_mode="const")
            loss = (out - x[idx]).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            out = G(z, cond * base.g_condition_gain, noise_mode="const").clamp(-1, 1)
        mse = (out - x).square().mean().item()
        hf = _highfreq(out[:16]).item() / target_hf
        rows.append(out[:16])
        print(f"lr {lr:<7g} mse {mse:.4f}  high-frequency energy / target {hf:.3f}  "
              f"({time.time() - t0:.0f} s)")
    grid = torch.cat(rows).add(1).mul(127.5).round().clamp(0, 255).byte()            # [K*16, 3, R, R]
    R = base.resolution
    grid = grid.view(len(rows), 16, 3, R, R).permute(0, 3, 1, 4, 2).reshape(len(rows) * R, 16 * R, 3)
    args.out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(grid.numpy())).save(args.out / "g_learning_speed.png")
    print(f"wrote {args.out / 'g_learning_speed.png'}")


if __name__ == "__main__":
    main()
