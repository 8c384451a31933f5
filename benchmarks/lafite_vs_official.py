"""Training-step time of langfree's LAFITE networks vs the official ones (drboog/Lafite), on CPU.

    python benchmarks/lafite_vs_official.py --official /path/to/Lafite [--rounds 10] [--threads 1]
                                            [--profile]

Both sides get the identical small config (32 px, fp32) and the same weights (the official
networks are built first, their tensors converted into langfree's), so their outputs agree; the
script checks that before timing. One step = the official phases Gmain (adversarial + D-feature
contrastive "itd") and Dmain (adversarial + itd on reals) plus 1/16 of Dreg (lazy R1, timed on
its own). The two implementations alternate within each round so
machine load affects both alike. Last line: ``ratio: X`` = official step time / langfree step time
(process CPU time, robust to other jobs on the machine).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def contrastive(a: torch.Tensor, b: torch.Tensor, tau: float = 0.5) -> torch.Tensor:
    """Symmetric InfoNCE over the batch on cosine similarity (same for both sides)."""
    sim = F.normalize(a, dim=1) @ F.normalize(b, dim=1).t() / tau
    target = torch.arange(a.shape[0])
    return 0.5 * (F.cross_entropy(sim, target) + F.cross_entropy(sim.t(), target))


class Side:
    """One implementation behind a common call signature: G(z, c) -> img, D(img, c) -> (logits, f)."""

    def __init__(self, name, G, D, g_call, d_call):
        self.name, self.G, self.D = name, G, D
        self.g_call, self.d_call = g_call, d_call
        # Fused Adam (one kernel per parameter group) on both sides: the optimiser is not what
        # this benchmark compares.
        self.opt_g = torch.optim.Adam(G.parameters(), lr=0.0025, betas=(0.0, 0.99), fused=True)
        self.opt_d = torch.optim.Adam(D.parameters(), lr=0.0025, betas=(0.0, 0.99), fused=True)

    def g_main(self, real, z, c, itd: float = 10.0) -> None:
        """Gmain: adversarial + itd contrastive through D's feature head; D frozen."""
        self.G.requires_grad_(True), self.D.requires_grad_(False)
        logits, f = self.d_call(self.g_call(z, c), c)
        loss = F.softplus(-logits).mean() + itd * contrastive(f, c)
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()

    def d_main(self, real, z, c, itd: float = 10.0) -> None:
        """Dmain: adversarial on fakes and reals + itd contrastive on reals; G frozen."""
        self.G.requires_grad_(False), self.D.requires_grad_(True)
        with torch.no_grad():
            img = self.g_call(z, c)
        logits_fake, _ = self.d_call(img, c)
        logits_real, f_real = self.d_call(real, c)
        loss = (F.softplus(logits_fake).mean() + F.softplus(-logits_real).mean()
                + itd * contrastive(f_real, c))
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d.step()

    def d_reg(self, real, z, c, gamma: float = 10.0, interval: int = 16) -> None:
        """Dreg: lazy R1 (gain = interval), a double backward through D."""
        self.G.requires_grad_(False), self.D.requires_grad_(True)
        x = real.detach().requires_grad_(True)
        logits_real, _ = self.d_call(x, c)
        (grad,) = torch.autograd.grad(logits_real.sum(), x, create_graph=True)
        loss = grad.square().sum(dim=(1, 2, 3)).mean() * (gamma / 2) * interval
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d.step()


PHASES = ("g_main", "d_main", "d_reg")
R1_INTERVAL = 16


def build(official: Path, cfg: dict):
    sys.path.insert(0, str(official))
    import dnnlib  # noqa: F401  (official)
    from training.networks import Discriminator as OD
    from training.networks import Generator as OG

    from langfree.families.lafite.convert import convert_state
    from langfree.families.lafite.networks import Discriminator, Generator

    torch.manual_seed(0)
    og = OG(z_dim=cfg["z_dim"], c_dim=0, w_dim=cfg["w_dim"], img_resolution=cfg["res"], img_channels=3,
            m_layer_features=cfg["c_dim"], mapping_kwargs={"num_layers": cfg["mapping_layers"]},
            synthesis_kwargs={"channel_base": cfg["channel_base"], "channel_max": cfg["channel_max"],
                                  "f_dim": cfg["c_dim"], "change": cfg["res"], "conv_clamp": None})
    od = OD(c_dim=0, img_resolution=cfg["res"], img_channels=3, channel_base=cfg["channel_base"],
            channel_max=cfg["channel_max"],
            epilogue_kwargs={"f_dim": cfg["c_dim"], "mbstd_group_size": 4})
    G = Generator(z_dim=cfg["z_dim"], c_dim=cfg["c_dim"], w_dim=cfg["w_dim"], img_resolution=cfg["res"],
                  channel_base=cfg["channel_base"], channel_max=cfg["channel_max"],
                  mapping_layers=cfg["mapping_layers"], change_resolution=cfg["res"])
    D = Discriminator(c_dim=cfg["c_dim"], img_resolution=cfg["res"], channel_base=cfg["channel_base"],
                      channel_max=cfg["channel_max"], projection="batch_sum")
    states = convert_state(og.state_dict(), od.state_dict())
    G.load_state_dict(states["G"]), D.load_state_dict(states["D"])
    def official_d(img, c):
        logits, f = od(img, None, fts=c)
        return logits.squeeze(1), f  # official logits are [B, 1]

    official_side = Side("official", og, od, lambda z, c: og(z, None, fts=c, noise_mode="none"),
                         official_d)
    langfree_side = Side("langfree", G, D,
                         lambda z, c: G(z, c, noise_mode="none"), lambda img, c: D(img, c))
    return official_side, langfree_side


def check_agreement(a: Side, b: Side, z, c, real) -> float:
    with torch.no_grad():
        ia, ib = a.g_call(z, c), b.g_call(z, c)
        la, lb = a.d_call(real, c)[0], b.d_call(real, c)[0]
    return max((ia - ib).abs().max().item(), (la - lb).abs().max().item())


def op_category(func, args) -> str:
    """Coarse bucket of one aten op for the --profile breakdown."""
    name = str(func)
    if "convolution" in name:
        weight = args[2] if "backward" in name else args[1]
        # forward and backward together: langfree writes some gradients as plain convolutions
        return "fir" if weight.dim() == 4 and weight.shape[1] == 1 else "conv"  # depthwise = FIR
    if "mm" in name or "linear" in name:
        return "matmul"
    if "adam" in name or "foreach" in name:
        return "adam"
    views = ("view", "t.default", "detach", "expand", "permute", "unsqueeze", "slice.Tensor",
             "select.int", "transpose", "squeeze", "_unsafe_view", "as_strided", "alias")
    return "views" if any(v in name for v in views) else "elementwise/other"


def profile(sides, phases, inputs, reps: int = 3) -> None:
    """Thread CPU time per op category and per phase, measured AFTER (and apart from) the timed
    rounds; the per-op clock adds overhead, so only the shares are meaningful, and the rest
    (Python, autograd bookkeeping) shows as 'overhead' = plain phase time - sum of ops."""
    from collections import defaultdict

    from torch.utils._python_dispatch import TorchDispatchMode

    class Clock(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ms, self.count = defaultdict(float), 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            t0 = time.thread_time()
            out = func(*args, **(kwargs or {}))
            self.ms[op_category(func, args)] += (time.thread_time() - t0) * 1e3 / reps
            self.count += 1
            return out

    for side in sides:
        for phase in phases:
            c0 = time.process_time()
            for _ in range(reps):
                getattr(side, phase)(*inputs)
            plain = (time.process_time() - c0) * 1e3 / reps
            clock = Clock()
            with clock:
                for _ in range(reps):
                    getattr(side, phase)(*inputs)
            parts = dict(sorted(clock.ms.items()))
            parts["overhead"] = plain - sum(clock.ms.values())
            print(f"profile {side.name:9s} {phase:7s} {plain:6.1f} ms, {clock.count // reps} ops: "
                  + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official", required=True, type=Path, help="path to a drboog/Lafite checkout")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--channel-max", type=int, default=128)
    ap.add_argument("--profile", action="store_true",
                    help="after the timing, print a per-op-category breakdown of each phase")
    args = ap.parse_args()
    if not (args.official / "training" / "networks.py").is_file():
        sys.exit(f"--official {args.official}: no training/networks.py there; pass a drboog/Lafite checkout")
    torch.set_num_threads(args.threads)
    cfg = {"res": 32, "z_dim": 512, "w_dim": 512, "c_dim": 512, "mapping_layers": 8, "channel_base": 2048,
               "channel_max": args.channel_max}
    official, langfree = build(args.official, cfg)
    n = lambda m: sum(p.numel() for p in m.parameters())
    print(f"config {cfg}, batch {args.batch}, threads {args.threads}")
    print(f"params official G {n(official.G)/1e6:.2f} M D {n(official.D)/1e6:.2f} M | "
          f"langfree G {n(langfree.G)/1e6:.2f} M D {n(langfree.D)/1e6:.2f} M")
    g = torch.Generator().manual_seed(1)
    z = torch.randn(args.batch, cfg["z_dim"], generator=g)
    c = F.normalize(torch.randn(args.batch, cfg["c_dim"], generator=g), dim=1)
    real = torch.rand(args.batch, 3, cfg["res"], cfg["res"], generator=g) * 2 - 1
    print(f"max |official - langfree| before training (G image, D logit): "
          f"{check_agreement(official, langfree, z, c, real):.2e}")
    for side in (official, langfree):  # warm-up (allocator, oneDNN primitive caches)
        for phase in PHASES:
            getattr(side, phase)(real, z, c)
    # CPU time of this process is the figure that survives a machine shared with other jobs
    # (wall time is printed too); with --threads 1 the two agree on a quiet machine.
    cpu = {(s.name, p): [] for s in (official, langfree) for p in PHASES}
    wall = {k: [] for k in cpu}
    for r in range(args.rounds):
        for side in ((official, langfree) if r % 2 == 0 else (langfree, official)):
            for phase in PHASES:
                t0, c0 = time.perf_counter(), time.process_time()
                getattr(side, phase)(real, z, c)
                cpu[side.name, phase].append(time.process_time() - c0)
                wall[side.name, phase].append(time.perf_counter() - t0)

    def step_time(times, name):  # G + D every step, R1 every 16th
        m = {p: statistics.median(times[name, p]) for p in PHASES}
        return m["g_main"] + m["d_main"] + m["d_reg"] / R1_INTERVAL, m

    result = {}
    for name in ("official", "langfree"):
        step, m = step_time(cpu, name)
        step_wall, _ = step_time(wall, name)
        result[name] = step
        print(f"{name:9s} G {m['g_main']*1e3:6.1f} ms  D {m['d_main']*1e3:6.1f} ms  "
              f"R1 {m['d_reg']*1e3:6.1f} ms  -> step (G + D + R1/{R1_INTERVAL}) "
              f"{step*1e3:6.1f} ms CPU, {step_wall*1e3:6.1f} ms wall (median of {args.rounds})")
    if args.profile:  # after the timed rounds: it does not change what is timed
        profile((official, langfree), PHASES, (real, z, c))
    print(f"ratio: {result['official'] / result['langfree']:.2f}")


if __name__ == "__main__":
    main()
