"""Training entry point for engine subprocess tests (SIGKILL resume, torchrun distributed).

Prints nothing special; writes ``<outdir>/hash-rank<r>.txt`` with a SHA-256 of every module's
final weights so tests can compare processes and runs.
"""

from __future__ import annotations

import argparse
import hashlib
import os

import torch

import tiny_family
from langfree.training.loop import TrainOptions, train


def weights_hash(family) -> str:
    h = hashlib.sha256()
    for name, module in sorted(family.modules().items()):
        for key, tensor in sorted(module.state_dict().items()):
            h.update(f"{name}.{key}".encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--outdir", required=True)
    ap.add_argument("--family", default="tiny", choices=["tiny", "tiny_gan"])
    ap.add_argument("--kimg", type=float, default=0.192)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batch-gpu", type=int, default=None)
    ap.add_argument("--tick-kimg", type=float, default=0.032)
    ap.add_argument("--snap", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", default=None)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--lr-rampdown", type=float, default=0.0)
    ap.add_argument("--sleep", type=float, default=0.0, help="seconds per dataset item")
    args = ap.parse_args()

    torch.set_num_threads(1)  # bitwise equality across runs needs the same thread count
    tiny_family.register()
    torch.manual_seed(args.seed)
    cls = tiny_family.TinyDenoiser if args.family == "tiny" else tiny_family.TinyGAN
    family = cls(cls.Config())
    dataset = tiny_family.TinyDataset(sleep=args.sleep)
    options = TrainOptions(
        outdir=args.outdir,
        kimg=args.kimg,
        batch=args.batch,
        batch_gpu=args.batch_gpu,
        tick_kimg=args.tick_kimg,
        snap=args.snap,
        seed=args.seed,
        deterministic=True,
        resume=args.resume,
        workers=args.workers,
        lr_rampdown=args.lr_rampdown,
    )
    train(
        family,
        dataset,
        options,
        {"entry": "engine_entry"},
        preview=lambda f: f.sample(dataset.emb[:4], [0, 1, 2, 3]),
    )
    rank = int(os.environ.get("RANK", "0"))
    with open(os.path.join(args.outdir, f"hash-rank{rank}.txt"), "w") as f:
        f.write(weights_hash(family))


if __name__ == "__main__":
    main()
