"""LAFITE network speed on this CPU: sampling images/s at 32, 64 and 256 px, and the model FLOP
utilisation (MFU) of a training step against fp32 GEMM and conv peaks measured in the same run.

    python benchmarks/lafite_speed.py [--threads 1] [--resolutions 32 64 256]

A training step = Gmain (adversarial + D-feature contrastive) + Dmain (fake/real adversarial +
contrastive on reals) + 1/16 of a lazy R1 pass, timed separately. FLOPs are counted with
torch.utils.flop_counter (convolutions and matmuls, forward and backward; 1 MAC = 2 FLOPs).
Elementwise work is not counted, so MFU here is a lower bound on hardware use.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from langfree.families.lafite.networks import Discriminator, Generator

# Per-resolution configs: 32 px = the shapes32 preset's widths, 256 px = the paper's networks.
CONFIGS = {
    32: {"z_dim": 64, "w_dim": 128, "c_dim": 512, "channel_base": 2048, "channel_max": 64, "mapping_layers": 2},
    64: {"z_dim": 512, "w_dim": 256, "c_dim": 512, "channel_base": 8192, "channel_max": 256, "mapping_layers": 4},
    256: {"z_dim": 512, "w_dim": 512, "c_dim": 512, "channel_base": 32768, "channel_max": 512, "mapping_layers": 8},
}
SAMPLE_BATCH = {32: 16, 64: 8, 256: 2}
TRAIN_BATCH = 8
R1_INTERVAL = 16


def build(res: int):
    cfg = CONFIGS[res]
    G = Generator(z_dim=cfg["z_dim"], c_dim=cfg["c_dim"], w_dim=cfg["w_dim"], img_resolution=res,
                  channel_base=cfg["channel_base"], channel_max=cfg["channel_max"],
                  mapping_layers=cfg["mapping_layers"], change_resolution=min(res, 256))
    D = Discriminator(c_dim=cfg["c_dim"], img_resolution=res, channel_base=cfg["channel_base"],
                      channel_max=cfg["channel_max"])
    return G, D


def timed(fn, repeats: int) -> float:
    """Best of ``repeats`` wall times: on a machine shared with other jobs the minimum is the
    figure closest to what the code itself costs (used alike for peaks and for the model)."""
    fn()  # warm-up: oneDNN builds its kernels on first use of a shape
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def sampling_rate(res: int, repeats: int) -> float:
    G, _ = build(res)
    G.eval().requires_grad_(False)
    b = SAMPLE_BATCH[res]
    z, c = torch.randn(b, G.z_dim), F.normalize(torch.randn(b, G.c_dim), dim=1)
    with torch.no_grad():
        return b / timed(lambda: G(z, c, noise_mode="const"), repeats)


def contrastive(a, b, tau=0.5):
    sim = F.normalize(a, dim=1) @ F.normalize(b, dim=1).t() / tau
    t = torch.arange(a.shape[0])
    return 0.5 * (F.cross_entropy(sim, t) + F.cross_entropy(sim.t(), t))


def train_phases(res: int):
    G, D = build(res)
    G.train()
    b = TRAIN_BATCH
    z, c = torch.randn(b, G.z_dim), F.normalize(torch.randn(b, G.c_dim), dim=1)
    real = torch.rand(b, 3, res, res) * 2 - 1

    def g_main():
        G.requires_grad_(True), D.requires_grad_(False)
        logits, f = D(G(z, c), c)
        (F.softplus(-logits).mean() + 10 * contrastive(f, c)).backward()

    def d_main():
        G.requires_grad_(False), D.requires_grad_(True)
        with torch.no_grad():
            fake = G(z, c)
        lf, _ = D(fake, c)
        lr, fr = D(real, c)
        (F.softplus(lf).mean() + F.softplus(-lr).mean() + 10 * contrastive(fr, c)).backward()

    def d_reg():
        G.requires_grad_(False), D.requires_grad_(True)
        x = real.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(D(x, c)[0].sum(), x, create_graph=True)
        (g.square().sum(dim=(1, 2, 3)).mean() * 5.0 * R1_INTERVAL).backward()

    return {"G": g_main, "D": d_main, "R1": d_reg}


class _FlopCount(TorchDispatchMode):
    """Counts conv/matmul FLOPs with torch's own per-op formulas (flop_registry). FlopCounterMode
    itself cannot run autograd.grad (R1), because of its module-tracking hooks."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = flop_registry.get(func._overloadpacket)
        if count is not None:
            self.total += count(*args, **kwargs, out_val=out)
        return out


def count_flops(fn) -> int:
    with _FlopCount() as counter:
        fn()
    return counter.total


def peaks(repeats: int) -> dict[str, float]:
    """fp32 GFLOP/s of a square GEMM and a channels_last 3x3 conv (forward + backward)."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    gemm = 2 * 1024 ** 3 / timed(lambda: a @ b, repeats) / 1e9
    x = torch.randn(8, 256, 32, 32).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    w = torch.randn(256, 256, 3, 3).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    conv_flops = 3 * 2 * 8 * 256 * 256 * 9 * 32 * 32  # forward + input grad + weight grad

    def conv_step():
        y = F.conv2d(x, w, padding=1)
        torch.autograd.grad(y.sum(), [x, w])

    conv = conv_flops / timed(conv_step, repeats) / 1e9
    return {"gemm": gemm, "conv": conv}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--resolutions", type=int, nargs="+", default=[32, 64, 256])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"threads {args.threads}, torch {torch.__version__}")
    peak = peaks(args.repeats)
    print(f"measured fp32 peak: GEMM 1024^3 {peak['gemm']:.0f} GFLOP/s, "
          f"conv3x3 fwd+bwd (8x256x32x32, channels_last) {peak['conv']:.0f} GFLOP/s")
    for res in args.resolutions:
        rate = sampling_rate(res, args.repeats)
        G, D = build(res)
        n = lambda m: sum(p.numel() for p in m.parameters()) / 1e6
        print(f"{res:4d} px  G {n(G):5.1f} M  D {n(D):5.1f} M  sampling {rate:7.2f} images/s "
              f"(batch {SAMPLE_BATCH[res]}, fp32, no grad)")
        if res > 64:
            continue  # a 256-px training step takes minutes on 2 cores; sampling only
        peak = peaks(args.repeats)  # re-measured next to the step it is compared with
        phases = train_phases(res)
        flops = {k: count_flops(fn) for k, fn in phases.items()}
        secs = {k: timed(fn, args.repeats) for k, fn in phases.items()}
        step_s = secs["G"] + secs["D"] + secs["R1"] / R1_INTERVAL
        step_f = flops["G"] + flops["D"] + flops["R1"] / R1_INTERVAL
        rate = step_f / step_s / 1e9
        print(f"{res:4d} px  train step (batch {TRAIN_BATCH}): G {secs['G']*1e3:.0f} ms, "
              f"D {secs['D']*1e3:.0f} ms, R1 {secs['R1']*1e3:.0f} ms -> {step_s*1e3:.0f} ms, "
              f"{step_f/1e9:.2f} GFLOP -> {rate:.0f} GFLOP/s = MFU {rate/peak['conv']:.0%} of conv "
              f"peak, {rate/peak['gemm']:.0%} of GEMM peak")


if __name__ == "__main__":
    main()
