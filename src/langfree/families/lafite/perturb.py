"""LAFITE-NN: a learned perturbation that turns image features into pseudo text features.

Two MLPs on the unit image feature î give a shift μ(î) and a log scale s(î); the pseudo text
feature is h̃ = normalize(î + μ + exp(s)·N(0, I)) (paper §3.2; the official code ships this
path commented out, with weights that were never published).

Training (``langfree train lafite-perturb``, the ``PerturbFamily`` below on the one loop) needs a
*captioned* archive (any captioned data, e.g. the
small-CLIP pre-training split; never the language-free generator data). Objective, per pair
(î, t̂): symmetric InfoNCE(h̃, t̂) (h̃ must identify its own caption among the batch) +
align_weight·(1 - cos(h̃, t̂)) (h̃ must land where the text features are: the modality gap)
+ kl_weight·KL(N(0, σ²) || N(0, s0²)), s0 = prior_scale/√D, which keeps the noise from
collapsing to a deterministic image→text map (σ → 0) and from swamping î (σ ≫ s0).
Files: a snapshot of that run (perturb.safetensors + config.json), or the older layout
DIR/perturb.safetensors + DIR/perturb.json (widths, encoder, training figures).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

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


def save_perturbation(net: PerturbNet, meta: dict, outdir: str | Path) -> Path:
    """Write DIR/perturb.safetensors + DIR/perturb.json atomically."""
    from safetensors.torch import save_file

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    atomic_write(outdir / WEIGHTS, lambda tmp: save_file(state, str(tmp)))
    write_json(outdir / META, meta)
    return outdir


def find_perturbation(path: str | Path) -> tuple[Path, dict]:
    """A perturbation folder and its widths {"dim", "hidden", "layers"}: a run dir of
    ``langfree train lafite-perturb`` (its latest snapshot), one of its snapshots, or the older
    DIR with perturb.json."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if (folder / META).is_file() and (folder / WEIGHTS).is_file():
        return folder, json.loads((folder / META).read_text())
    from langfree.checkpoint import SnapshotError, resolve_snapshot

    try:
        snap = resolve_snapshot(folder)
    except SnapshotError:
        snap = None
    if snap is not None and (snap / WEIGHTS).is_file():
        record = json.loads((snap / "config.json").read_text())
        if record.get("family") == PerturbFamily.name:
            cfg = record["config"]
            return snap, {"dim": cfg["dim"], "hidden": cfg["hidden"], "layers": cfg["layers"],
                          "encoder": record.get("encoder")}
    raise FileNotFoundError(f"--perturb {path}: not a trained perturbation; train one with "
                            "`langfree train lafite-perturb --data CAPTIONED.zip --encoder SPEC` "
                            "and pass its run directory")


def load_perturbation(path: str | Path, dim: int | None = None) -> tuple[PerturbNet, dict]:
    """Read a perturbation (see ``find_perturbation``); checks the feature width."""
    from safetensors.torch import load_file

    folder, meta = find_perturbation(path)
    if dim is not None and meta["dim"] != dim:
        raise ValueError(f"{path}: perturbation was trained for {meta['dim']}-d features, the "
                         f"encoder gives {dim}-d; retrain it with this encoder")
    net = PerturbNet(meta["dim"], meta["hidden"], meta["layers"])
    net.load_state_dict(load_file(str(folder / WEIGHTS)))
    return net.eval().requires_grad_(False), meta


# ---------------------------------------------------------------------- on the engine
@dataclass(frozen=True)
class PerturbConfig:
    dim: int = 512                # = encoder.embed_dim (filled from the encoder)
    hidden: int = 1024            # official LAFITE-NN widths 512→1024→1024→1024→512
    layers: int = 4
    lr: float = 1e-3
    temperature: float = 0.1
    kl_weight: float = 0.01
    align_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.layers < 2 or self.hidden < 1 or self.dim < 1:
            raise ValueError(f"perturbation widths dim={self.dim} hidden={self.hidden} "
                             f"layers={self.layers}: need dim, hidden >= 1 and layers >= 2")


class PerturbFamily:
    """LAFITE-NN's perturbation trained on (image feature, caption feature) pairs. Not an
    image generator: its snapshot (perturb.safetensors) is what ``--perturb`` reads."""

    name: ClassVar[str] = "lafite-perturb"
    Config: ClassVar[type] = PerturbConfig
    needs = frozenset({"image_emb", "text_emb", "has_caption"})
    needs_captions = True

    def __init__(self, config: PerturbConfig, encoder=None):
        self.config, self.encoder = config, encoder
        self.perturb = PerturbNet(config.dim, config.hidden, config.layers)
        self._optimizers = None

    def modules(self) -> dict[str, nn.Module]:
        return {"perturb": self.perturb}

    def ema_pairs(self) -> list[tuple[str, str]]:
        return []

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        if self._optimizers is None:
            from langfree.families.base import adam

            self._optimizers = {"main": adam(self.perturb.parameters(), self.config.lr,
                                             decoupled=False)}
        return self._optimizers

    def phases(self):
        from langfree.families.base import Phase

        return [Phase("main", ("perturb",), "main")]

    def loss(self, phase, nets, batch, progress):
        from langfree.families.base import LossOutput

        keep = batch["has_caption"].bool()                              # [B]
        image = F.normalize(batch["image_emb"][keep].float(), dim=-1)   # [B', D]
        text = F.normalize(batch["text_emb"][keep].float(), dim=-1)
        if len(image) < 2:  # a batch of a partly captioned archive with < 2 pairs: no signal
            zero = sum(p.sum() for p in nets["perturb"].parameters()) * 0.0
            return LossOutput(zero, {"pairs": float(len(image))})
        cfg = self.config
        loss, stats = perturb_loss(nets["perturb"], image, text, cfg.temperature, cfg.kl_weight,
                                   align_weight=cfg.align_weight)
        return LossOutput(loss, {**stats, "pairs": float(len(image))})
