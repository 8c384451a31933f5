"""langfree's DALL·E transformer vs lucidrains/DALLE-pytorch at an identical small config.

    python benchmarks/dalle_vs_dallepytorch.py --official /tmp/ref/dalle-pytorch \
        [--deps /tmp/ref/dpdeps] [--rounds 3]

``--official``: a checkout of lucidrains/DALLE-pytorch OUTSIDE this repo (its ``dalle_pytorch``
folder is imported from there; nothing is copied). It needs ``axial_positional_embedding`` and
``rotary_embedding_torch`` importable (``pip install --target DIR --no-deps ...`` and
``--deps DIR``). Its ``vae.py`` (taming / OmegaConf / OpenAI downloads) and ``distributed_utils``
(deepspeed / horovod) are replaced by empty stand-ins before import: the benchmark uses only
``DALLE`` and its ``DiscreteVAE`` (for the geometry; it decodes nothing).

Config (both sides): dim 256, depth 4, heads 4 × 64, text 32 + image 8×8 = 96 tokens, 512 text
and 512 image tokens, learned positions (DALLE-pytorch: ``rotary_emb=False``, axial image
positions; ``shift_tokens=False``), the same feed-forward size (its GEGLU with mult 4 has
12·dim² weights, langfree's GELU MLP with ff_mult 6 too), dropout 0, batch 16, AdamW lr 3e-4,
one thread.
Measured, alternating the two in each round (the median over rounds is printed):
  - training samples/s (forward + backward + step);
  - time to generate the codes of 8 images (top-k 0.9, temperature 1), unguided (DALLE-pytorch
    ``use_cache=True``: its cache is only used when cond_scale != 1, so this is its uncached
    path) and guided at scale 3 (both cached). The image decode is excluded on both sides.
Prints ``train ratio: X`` and ``generate ratio: Y`` (DALLE-pytorch time / langfree time; Y is
the unguided case, DALLE-pytorch's default ``cond_scale=1``), then
``generate ratio (guided 3): Z``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from dataclasses import replace
from pathlib import Path

import torch

DIM, DEPTH, HEADS, TEXT_LEN, GRID, VOCAB, BATCH = 256, 4, 4, 32, 8, 512, 16


def import_official(path: Path, deps: Path | None):
    if deps is not None:
        sys.path.insert(0, str(deps))
    pkg_dir = path / "dalle_pytorch"
    if not (pkg_dir / "dalle_pytorch.py").is_file():
        raise SystemExit(f"--official {path}: no dalle_pytorch/dalle_pytorch.py there")
    pkg = types.ModuleType("dalle_pytorch")
    pkg.__path__ = [str(pkg_dir)]  # skip its __init__ (pkg_resources, vae imports)
    sys.modules["dalle_pytorch"] = pkg
    vae = types.ModuleType("dalle_pytorch.vae")
    vae.OpenAIDiscreteVAE = type("OpenAIDiscreteVAE", (), {})
    vae.VQGanVAE = type("VQGanVAE", (), {})
    sys.modules["dalle_pytorch.vae"] = vae
    dist = types.ModuleType("dalle_pytorch.distributed_utils")
    dist.is_distributed = False
    sys.modules["dalle_pytorch.distributed_utils"] = dist
    pkg.distributed_utils = dist
    import dalle_pytorch.dalle_pytorch as official

    return official


def build_official(official):
    vae = official.DiscreteVAE(image_size=GRID * 4, num_layers=2, num_tokens=VOCAB,
                               codebook_dim=64, hidden_dim=16)
    return official.DALLE(dim=DIM, vae=vae, num_text_tokens=VOCAB, text_seq_len=TEXT_LEN,
                          depth=DEPTH, heads=HEADS, dim_head=DIM // HEADS, rotary_emb=False,
                          shift_tokens=False, attn_dropout=0.0, ff_dropout=0.0)


def build_langfree():
    from langfree.families.dalle.config import PRESETS
    from langfree.families.dalle.transformer import DalleTransformer

    cfg = replace(PRESETS["shapes32"], text_vocab=VOCAB, text_len=TEXT_LEN, image_vocab=VOCAB,
                  image_grid=GRID, dim=DIM, depth=DEPTH, heads=HEADS,
                  ff_mult=6)  # = DALLE-pytorch's GEGLU(mult 4): 12·dim² weights per layer
    return DalleTransformer(cfg)


def train_rate(step, steps: int) -> float:
    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * BATCH / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--official", required=True, type=Path)
    ap.add_argument("--deps", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    from langfree.families.dalle.config import DalleSampleOptions
    from langfree.families.dalle.loss import dalle_loss
    from langfree.families.dalle.sampler import sample_codes

    official = import_official(args.official, args.deps)
    theirs, ours = build_official(official), build_langfree()
    n_theirs = sum(p.numel() for n, p in theirs.named_parameters() if not n.startswith("vae."))
    n_ours = sum(p.numel() for p in ours.parameters())
    print(f"parameters: DALLE-pytorch {n_theirs / 1e6:.2f} M, langfree {n_ours / 1e6:.2f} M",
          flush=True)
    # DALLE-pytorch: 0 = pad (it remaps pads to per-position ids itself); langfree: ids as given
    text = torch.randint(1, VOCAB, (BATCH, TEXT_LEN))
    text[:, 12:] = 0
    ours_text = torch.where(text == 0, VOCAB + torch.arange(TEXT_LEN), text)
    codes = torch.randint(0, VOCAB, (BATCH, GRID * GRID))
    opt_t = torch.optim.AdamW([p for n, p in theirs.named_parameters() if not n.startswith("vae.")],
                              lr=3e-4)
    opt_o = torch.optim.AdamW(ours.parameters(), lr=3e-4)

    def step_theirs():
        loss = theirs(text.clone(), codes, return_loss=True)
        opt_t.zero_grad()
        loss.backward()
        opt_t.step()

    def step_ours():
        loss, _ = dalle_loss(ours, ours_text, codes)
        opt_o.zero_grad()
        loss.backward()
        opt_o.step()

    theirs.vae.decode = lambda seq: seq  # time token generation only, on both sides
    null = VOCAB + torch.arange(TEXT_LEN)

    def gen_theirs(scale):
        t0 = time.perf_counter()
        theirs.generate_images(text[:8].clone(), filter_thres=0.9, cond_scale=scale,
                               use_cache=True)
        return time.perf_counter() - t0

    def gen_ours(scale):
        t0 = time.perf_counter()
        ours.eval()
        sample_codes(ours, ours_text[:8], null, list(range(8)),
                     DalleSampleOptions(filter_thres=0.9, guidance_scale=scale))
        ours.train()
        return time.perf_counter() - t0

    rows = {k: [] for k in ("train_t", "train_o", "gen1_t", "gen1_o", "gen3_t", "gen3_o")}
    for r in range(args.rounds):
        rows["train_t"].append(train_rate(step_theirs, args.steps))
        rows["train_o"].append(train_rate(step_ours, args.steps))
        rows["gen1_t"].append(gen_theirs(1.0))
        rows["gen1_o"].append(gen_ours(1.0))
        rows["gen3_t"].append(gen_theirs(3.0))
        rows["gen3_o"].append(gen_ours(3.0))
        print(f"round {r}: " + "  ".join(f"{k} {v[-1]:.3f}" for k, v in rows.items()), flush=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"training samples/s: DALLE-pytorch {med['train_t']:.1f}, langfree {med['train_o']:.1f}")
    print(f"generate 8 (unguided): DALLE-pytorch {med['gen1_t']:.2f} s, "
          f"langfree {med['gen1_o']:.2f} s")
    print(f"generate 8 (guided 3): DALLE-pytorch {med['gen3_t']:.2f} s, langfree {med['gen3_o']:.2f} s")
    print(f"train ratio: {med['train_o'] / med['train_t']:.2f}")
    print(f"generate ratio: {med['gen1_t'] / med['gen1_o']:.2f}")
    print(f"generate ratio (guided 3): {med['gen3_t'] / med['gen3_o']:.2f}")


if __name__ == "__main__":
    main()
