"""One MaskDiT training step (network + EDM/MAE loss, forward, backward, AdamW step) of langfree
and of the official Anima-Lab/MaskDiT code at an identical small config, alternated in one run
(never a test).

    .venv/bin/python benchmarks/maskdit_vs_official.py --official /path/to/MaskDiT [--threads 1]

The official side is its ``EDMPrecond`` (models/maskdit.py, needs timm) and its ``EDMLoss``
(train_utils/loss.py) unchanged; its loss reads ``net.module`` (it expects a DDP wrapper), so the
network is handed over in a one-attribute wrapper. Both sides start from the same weights.
Last line: ``ratio: X`` = official time / langfree time.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

from langfree.families.base import adam
from langfree.families.maskdit.convert import official_to_langfree
from langfree.families.maskdit.loss import maskdit_loss
from langfree.families.maskdit.networks import EDMDenoiser, MaskDiT


class Wrapped(torch.nn.Module):
    """What the official loss expects of ``net``: callable, ``.module``, ``.training``."""

    def __init__(self, net):
        super().__init__()
        self.module = net

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--official", required=True, help="checkout of Anima-Lab/MaskDiT")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, args.official)
    from models.maskdit import EDMPrecond  # noqa: E402  (the official code)
    from train_utils.loss import EDMLoss  # noqa: E402

    torch.manual_seed(0)
    # DiT-S/2 encoder (384 wide, 12 deep) on 4×16×16 latents = 64 tokens; the official decoder
    ref = EDMPrecond(img_resolution=16, img_channels=4, num_classes=512, model_type="DiT-S/2",
                     use_decoder=True, mae_loss_coef=0.1).train()
    ours = EDMDenoiser(MaskDiT(input_size=16, in_channels=4, cond_dim=512, hidden=384, depth=12,
                               heads=6, patch=2, decoder_hidden=512, decoder_depth=8,
                               decoder_heads=16), 0.5).train()
    ours.load_state_dict(official_to_langfree(ref.state_dict(), ours))
    x = torch.randn(args.batch, 4, 16, 16) * 0.5
    y = F.normalize(torch.randn(args.batch, 512), dim=1)
    wrapped, loss_fn = Wrapped(ref), EDMLoss()
    opt_ref = torch.optim.AdamW(ref.parameters(), lr=1e-4, weight_decay=0)
    # each side's own optimiser: the official train.py's AdamW, langfree's engine's (fused) AdamW
    opt_ours = adam(ours.parameters(), lr=1e-4, weight_decay=0)

    def step_official():
        loss = loss_fn(wrapped, x, y, mask_ratio=0.5, mae_loss_coef=0.1).mean()
        opt_ref.zero_grad(set_to_none=True)
        loss.backward()
        opt_ref.step()

    def step_ours():
        loss, _ = maskdit_loss(ours, x, y, mask_ratio=0.5, mae_weight=0.1)
        opt_ours.zero_grad(set_to_none=True)
        loss.backward()
        opt_ours.step()

    def timed(fn):
        fn()
        t = time.perf_counter()
        for _ in range(args.reps):
            fn()
        return (time.perf_counter() - t) / args.reps

    t_ref, t_ours = [], []
    for r in range(args.rounds):
        t_ref.append(timed(step_official))
        t_ours.append(timed(step_ours))
        print(f"round {r}: official {t_ref[-1]:.3f} s/step  langfree {t_ours[-1]:.3f} s/step")
    print(f"threads {args.threads} batch {args.batch}, 64 tokens, mask 0.5: official "
          f"{min(t_ref):.3f} s, langfree {min(t_ours):.3f} s (best of {args.rounds})")
    print(f"ratio: {min(t_ref) / min(t_ours):.2f}")


if __name__ == "__main__":
    main()
