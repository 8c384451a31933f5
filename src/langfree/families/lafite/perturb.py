"""LAFITE-NN: a learned perturbation that turns image features into pseudo text features.

Two MLPs on the unit image feature î give a shift μ(î) and a log scale s(î); the pseudo text
feature is h̃ = normalize(î + μ + exp(s)·N(0, I)) (paper §3.2; the official code ships this
path commented out, with weights that were never published).

Training (``train_perturbation``) needs a *captioned* archive (any captioned data, e.g. the
small-CLIP pre-training split; never the language-free generator data). Objective, per pair
(î, t̂): symmetric InfoNCE(h̃, t̂) (h̃ must identify its own caption among the batch) +
align_weight·(1 - cos(h̃, t̂)) (h̃ must land where the text features are: the modality gap)
+ kl_weight·KL(N(0, σ²) || N(0, s0²)), s0 = prior_scale/√D, which keeps the noise from
collapsing to a deterministic image→text map (σ → 0) and from swamping î (σ ≫ s0).
Files: DIR/perturb.safetensors + DIR/perturb.json (widths, encoder, training figures).
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from langfree.io import atomic_write, write_json

WEIGHTS = "perturb.safetensors"
META = "perturb.json"


def _mlp(dim: int, hidden: int, layers: int) -> nn.Sequential:
    widths = [dim] + [hidden] * (layers - 1) + [dim]
    blocks: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        blocks.append(nn.Linear(a, b))
        if i < layers - 1:
            blocks.append(nn.LeakyReLU(0.2))
    return nn.Sequential(*blocks)


class PerturbNet(nn.Module):
    """î [B, D] (unit) -> h̃ [B, D] (unit), stochastic (global RNG)."""

    def __init__(self, dim: int, hidden: int = 1024, layers: int = 4):
        super().__init__()
        self.mu = _mlp(dim, hidden, layers)
        self.log_sigma = _mlp(dim, hidden, layers)
        # Start as "small noise, no shift": a zero shift and σ = exp(-3)·… keeps h̃ ≈ î at init.
        nn.init.zeros_(self.mu[-1].weight)
        nn.init.zeros_(self.mu[-1].bias)
        nn.init.zeros_(self.log_sigma[-1].weight)
        nn.init.constant_(self.log_sigma[-1].bias, -3.0)

    def moments(self, image_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mu(image_emb), self.log_sigma(image_emb)            # [B, D], [B, D]

    def forward(self, image_emb: torch.Tensor) -> torch.Tensor:
        mu, log_sigma = self.moments(image_emb)                         # [B, D] each
        noise = torch.randn_like(mu) * log_sigma.exp()                  # [B, D]
        return F.normalize(image_emb + mu + noise, dim=-1)


def perturb_loss(net: PerturbNet, image_emb: torch.Tensor, text_emb: torch.Tensor,
                 temperature: float = 0.1, kl_weight: float = 0.01, prior_scale: float = 1.0,
                 align_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """The objective in the module docstring; returns (loss, stats). Inputs [B, D] unit."""
    from langfree.families.lafite.loss import contrastive_loss

    mu, log_sigma = net.moments(image_emb)                              # [B, D]
    h = F.normalize(image_emb + mu + torch.randn_like(mu) * log_sigma.exp(), dim=-1)
    nce = contrastive_loss(h, text_emb, temperature)
    cos_text = (h * F.normalize(text_emb, dim=-1)).sum(-1).mean()
    log_ratio = log_sigma - math.log(prior_scale / math.sqrt(image_emb.shape[1]))
    kl = 0.5 * ((2 * log_ratio).exp() - 1 - 2 * log_ratio)              # [B, D], >= 0
    loss = nce + align_weight * (1 - cos_text) + kl_weight * kl.mean()
    cos_image = (h * image_emb).sum(-1).mean()
    return loss, {"nce": float(nce.detach()), "kl": float(kl.mean().detach()), "cos_text": float(cos_text.detach()),
                  "cos_image": float(cos_image.detach()), "sigma": float(log_sigma.detach().exp().mean())}


def train_perturbation(image_emb: torch.Tensor, caption_emb: torch.Tensor,
                       caption_offsets: torch.Tensor, *, hidden: int = 1024, layers: int = 4,
                       steps: int = 2000, batch: int = 64, lr: float = 1e-3,
                       temperature: float = 0.1, kl_weight: float = 0.01,
                       align_weight: float = 1.0, seed: int = 0, log=print) -> tuple[PerturbNet, dict]:
    """Fit a PerturbNet on (image feature, one of its captions' features) pairs.

    image_emb [N, D], caption_emb [M, D], caption_offsets [N + 1] (captions of image i are rows
    offsets[i]:offsets[i+1]). Images without captions are skipped.
    """
    counts = caption_offsets[1:] - caption_offsets[:-1]                 # [N]
    usable = torch.nonzero(counts > 0).flatten()
    if len(usable) < 2:
        raise ValueError("training the perturbation needs a captioned archive (>= 2 images with "
                         "captions); this one has none: build it from a folder with X.txt beside "
                         "X.png, or use conditioning 'gaussian'")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    image_emb = F.normalize(image_emb.float(), dim=-1)
    caption_emb = F.normalize(caption_emb.float(), dim=-1)
    net = PerturbNet(image_emb.shape[1], hidden, layers)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    batch = min(batch, len(usable))
    stats: dict[str, float] = {}
    for step in range(steps):
        pick = usable[torch.randint(len(usable), (batch,), generator=gen)]      # [B]
        which = (torch.rand(batch, generator=gen) * counts[pick]).long()         # [B]
        text = caption_emb[caption_offsets[pick] + which]                        # [B, D]
        loss, stats = perturb_loss(net, image_emb[pick], text, temperature, kl_weight,
                                   align_weight=align_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % max(1, steps // 10) == 0 or step == steps - 1:
            log(f"step {step:5d}  loss {loss.item():.4f}  " +
                "  ".join(f"{k} {v:.3f}" for k, v in stats.items()))
    net.eval().requires_grad_(False)
    meta = {"dim": image_emb.shape[1], "hidden": hidden, "layers": layers, "steps": steps,
            "batch": batch, "lr": lr, "temperature": temperature, "kl_weight": kl_weight,
            "align_weight": align_weight,
            "seed": seed, "final": stats}
    return net, meta


def save_perturbation(net: PerturbNet, meta: dict, outdir: str | Path) -> Path:
    """Write DIR/perturb.safetensors + DIR/perturb.json atomically."""
    from safetensors.torch import save_file

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    atomic_write(outdir / WEIGHTS, lambda tmp: save_file(state, str(tmp)))
    write_json(outdir / META, meta)
    return outdir


def load_perturbation(path: str | Path, dim: int | None = None) -> tuple[PerturbNet, dict]:
    """Read a perturbation directory (or its perturb.safetensors); checks the feature width."""
    from safetensors.torch import load_file

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if not (folder / WEIGHTS).is_file() or not (folder / META).is_file():
        raise FileNotFoundError(f"{path}: no {WEIGHTS} + {META} here; train one with "
                                "`langfree train lafite-perturb --data CAPTIONED.zip --out DIR`")
    meta = json.loads((folder / META).read_text())
    if dim is not None and meta["dim"] != dim:
        raise ValueError(f"{path}: perturbation was trained for {meta['dim']}-d features, the "
                         f"encoder gives {dim}-d; retrain it with this encoder")
    net = PerturbNet(meta["dim"], meta["hidden"], meta["layers"])
    net.load_state_dict(load_file(str(folder / WEIGHTS)))
    return net.eval().requires_grad_(False), meta
