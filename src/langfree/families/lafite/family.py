"""LafiteFamily: LAFITE (StyleGAN2 conditioned on CLIP features) on the one training loop.

Modules: G, G_ema, D (+ perturb for LAFITE-NN, + G_pl holding the path-length mean when the
path-length regulariser is on). Phases (StyleGAN2 lazy regularisation):
G every step, Greg every g_reg_interval (if pl_weight > 0), D every step, Dreg every
d_reg_interval (if r1_gamma > 0). Losses are in loss.py, the condition h in conditioning.py.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from langfree.families.base import (
    EMA,
    LossOutput,
    LRSchedule,
    Phase,
    Progress,
    adam,
    count_parameters,
)
from langfree.families.lafite import loss as losses
from langfree.families.lafite.conditioning import condition_features
from langfree.families.lafite.config import LafiteConfig
from langfree.families.lafite.perturb import PerturbNet


class _PathLengthMean(nn.Module):
    """The running mean of path lengths (StyleGAN2), a buffer so snapshots and resume keep it."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("pl_mean", torch.zeros([]))


def build_networks(config: LafiteConfig) -> tuple[nn.Module, nn.Module]:
    from langfree.families.lafite.networks import Discriminator, Generator

    G = Generator(z_dim=config.z_dim, c_dim=config.c_dim, w_dim=config.w_dim,
                  img_resolution=config.resolution, img_channels=3,
                  channel_base=config.channel_base, channel_max=config.channel_max,
                  mapping_layers=config.mapping_layers,
                  change_resolution=config.change_resolution, conv_clamp=config.conv_clamp,
                  style_lr_mult=config.style_lr_mult)
    D = Discriminator(c_dim=config.c_dim, img_resolution=config.resolution, img_channels=3,
                      channel_base=config.d_channel_base or config.channel_base,
                      channel_max=config.d_channel_max or config.channel_max,
                      mbstd_group_size=config.mbstd_group_size, projection=config.d_projection,
                      conv_clamp=config.conv_clamp)  # official: one conv_clamp for G and D
    return G, D


NOISE_MODES = ("const", "random", "none")


@dataclass(frozen=True)
class LafiteSampleOptions:
    """How LAFITE samples: truncation ψ of w towards its average (1 = none), and the
    synthesis noise inputs (const: fixed per layer; random: drawn per image from its seed)."""

    truncation_psi: float = field(default=1.0, metadata={
        "min": 0.0, "max": 2.0, "help": "Truncation ψ: 1 = none, < 1 trades variety for fidelity."})
    noise_mode: str = field(default="const", metadata={
        "choices": NOISE_MODES, "help": "Noise inputs: const, random (seeded per image) or none."})

    def __post_init__(self) -> None:
        if self.noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode {self.noise_mode!r}: use one of {', '.join(NOISE_MODES)}")


class LafiteFamily:
    name: ClassVar[str] = "lafite"
    Config: ClassVar[type] = LafiteConfig
    SampleOptions: ClassVar[type] = LafiteSampleOptions

    def __init__(self, config: LafiteConfig, encoder=None):
        if encoder is not None and encoder.embed_dim != config.c_dim:
            raise ValueError(f"LAFITE c_dim={config.c_dim} but the encoder {encoder.spec!r} gives "
                             f"{encoder.embed_dim}-d features; set c_dim={encoder.embed_dim}")
        self.config = config
        self.encoder = encoder
        self.G, self.D = build_networks(config)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.perturb: PerturbNet | None = None
        if config.conditioning == "learned":
            # Weights come from load_perturbation (the CLI) or from a snapshot; the constructor
            # reads no files.
            self.perturb = PerturbNet(config.c_dim, config.perturb_hidden,
                                      config.perturb_layers).eval().requires_grad_(False)
        self.pl_state = _PathLengthMean() if config.pl_weight > 0 else None
        self.bank = (losses.ConditionBank(config.contrastive_negatives, config.c_dim)
                     if config.contrastive_negatives > 0 else None)
        self._optimizers: dict[str, torch.optim.Optimizer] | None = None
        self._fakes: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}  # reuse_fakes: G -> D

    # ----------------------------------------------------------------- protocol: structure
    @property
    def needs(self) -> frozenset[str]:
        return frozenset({"image", "image_emb", "text_emb", "has_caption"})

    def default_ema(self, batch: int) -> EMA:
        """G_ema half-life in kimg: the config's, else the official 10 · batch / 32."""
        return EMA(self.config.ema_kimg if self.config.ema_kimg is not None else 10.0 * batch / 32)

    def lr_schedule(self) -> LRSchedule:
        return LRSchedule(rampdown=self.config.lr_rampdown)

    def snapshot_modules(self) -> tuple[str, ...]:
        """Sampling needs G_ema only (and the perturbation that conditioned it, kept so the
        snapshot records what it was trained with); D, the condition queue and the path-length
        mean live in the resumable state."""
        return ("G_ema", "perturb") if self.perturb is not None else ("G_ema",)

    def modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"G": self.G, "G_ema": self.G_ema, "D": self.D}
        if self.perturb is not None:
            mods["perturb"] = self.perturb
        if self.pl_state is not None:
            mods["G_pl"] = self.pl_state
        if self.bank is not None:
            mods["cond_bank"] = self.bank
        return mods

    def ema_pairs(self) -> list[tuple[str, str]]:
        return [("G", "G_ema")]

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        if self._optimizers is None:
            cfg = self.config
            self._optimizers = {
                "G": self._adam(self.G, cfg.g_reg_interval if cfg.pl_weight > 0 else 1),
                "D": self._adam(self.D, cfg.d_reg_interval if cfg.r1_gamma > 0 else 1),
            }
        return self._optimizers

    def _adam(self, net: nn.Module, reg_interval: int) -> torch.optim.Optimizer:
        # Lazy regularisation (StyleGAN2 App. B): the regulariser's extra steps are folded into
        # lr and betas so the effective averaging horizon matches a non-lazy schedule.
        ratio = reg_interval / (reg_interval + 1)
        beta1, beta2 = self.config.betas
        return adam(net.parameters(), self.config.lr * ratio, (beta1 ** ratio, beta2 ** ratio),
                    decoupled=False)

    def phases(self) -> list[Phase]:
        cfg = self.config
        out = [Phase("G", ("G",), "G", 1)]
        if cfg.pl_weight > 0:
            out.append(Phase("Greg", ("G",), "G", cfg.g_reg_interval))
        out.append(Phase("D", ("D",), "D", 1))
        if cfg.r1_gamma > 0:
            out.append(Phase("Dreg", ("D",), "D", cfg.d_reg_interval))
        return out

    def activation_bytes_per_image(self) -> int:
        """For the engine's memory check (a lower bound, measured: lafite/memory.py)."""
        from langfree.families.lafite.memory import activation_bytes_per_image

        return activation_bytes_per_image(self.config)

    def parameter_counts(self) -> dict[str, int]:
        counts = {"G": count_parameters(self.G), "D": count_parameters(self.D)}
        if self.perturb is not None:
            counts["perturb"] = count_parameters(self.perturb)
        return counts

    # ------------------------------------------------------------------- conditioning
    def load_perturbation(self, path) -> dict:
        """Load LAFITE-NN weights trained by ``langfree train lafite-perturb``."""
        from langfree.families.lafite.perturb import load_perturbation

        if self.perturb is None:
            raise ValueError("load_perturbation: this model's conditioning is "
                             f"{self.config.conditioning!r}, not 'learned'")
        net, meta = load_perturbation(path, dim=self.config.c_dim)
        if (meta["hidden"], meta["layers"]) != (self.config.perturb_hidden,
                                                self.config.perturb_layers):
            raise ValueError(f"{path}: perturbation widths hidden={meta['hidden']} "
                             f"layers={meta['layers']} differ from the config's; pass "
                             f"--set perturb_hidden={meta['hidden']} "
                             f"--set perturb_layers={meta['layers']}")
        self.perturb.load_state_dict(net.state_dict())
        return meta

    # ---------------------------------------------------------------------- training
    def loss(self, phase: Phase, nets: dict[str, nn.Module], batch: dict[str, Any],
             progress: Progress) -> LossOutput:
        cfg, step = self.config, progress.step
        key = (step, id(batch["image"]))  # the same micro-batch reaches G, then D, each step
        reused = self._fakes.pop(key, None) if phase.name == "D" else None
        if reused is not None:     # D sees the fakes (and conditions) G was trained on
            h, fake = reused
        else:
            h = condition_features(cfg, batch, nets.get("perturb", self.perturb))    # [B, c] unit
            fake = None
        bank = nets.get("cond_bank", self.bank)
        negatives = bank.negatives() if bank is not None else None
        ramp = losses.condition_ramp(cfg, progress.nimg)
        if phase.name == "G":
            self._encoder_to(h.device)
            loss, stats, fake = losses.generator_loss(cfg, nets["G"], nets["D"], self.encoder,
                                                      h, negatives, ramp)
            if cfg.reuse_fakes:
                self._fakes = {k: v for k, v in self._fakes.items() if k[0] == step}
                self._fakes[key] = (h.detach(), fake)
        elif phase.name == "Greg":
            loss, stats = losses.path_length_loss(cfg, nets["G"], h, nets.get("G_pl", self.pl_state).pl_mean,
                                                  ramp)
        elif phase.name == "D":
            loss, stats = losses.discriminator_loss(cfg, nets["G"], nets["D"],
                                                    self._reals(batch), h, negatives, fake, ramp)
            if bank is not None:  # filled once per step, after both contrastive uses
                bank.push(h)
        elif phase.name == "Dreg":
            loss, stats = losses.r1_loss(cfg, nets["D"], self._reals(batch), h, ramp)
        else:
            raise ValueError(f"LAFITE has no phase {phase.name!r}")
        if cfg.condition_rampup_kimg > 0:
            stats["h/ramp"] = torch.tensor(ramp)
        stats["h/cos_image"] = (h * F.normalize(batch["image_emb"].float(), dim=-1)).sum(-1).mean()
        return LossOutput(loss, stats)

    def _reals(self, batch: dict[str, Any]) -> torch.Tensor:
        real = batch["image"]                                           # [B, 3, R, R] in [-1, 1]
        if real.shape[-1] != self.config.resolution:
            raise ValueError(f"batch images are {real.shape[-1]} px, the model is "
                             f"{self.config.resolution} px; use an archive at that resolution")
        if self.config.mirror:
            # x-flip half the reals; their features stay unflipped (official --mirror).
            flip = torch.rand(real.shape[0], device=real.device) < 0.5
            real = torch.where(flip[:, None, None, None], real.flip(-1), real)
        return real

    def _encoder_to(self, device: torch.device) -> None:
        if self.encoder is not None and getattr(self, "_encoder_device", None) != device:
            self.encoder = self.encoder.to(device)
            self._encoder_device = device

    # ---------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(self, conditions: Any, seeds: list[int], options: LafiteSampleOptions | None = None,
               batch_size: int = 32) -> torch.Tensor:
        """Condition rows (their embeddings: prompt text features, or reference image features
        for image variation) + one seed each -> [B, 3, R, R] in [-1, 1] from G_ema.

        z for seed s is ``np.random.RandomState(s).randn(z_dim)`` (StyleGAN's generate.py
        convention, so seeds mean the same as in the official tools). With noise_mode="random"
        the noise inputs are drawn per image from a generator seeded by s. The global RNG is
        left untouched (the loop's preview must not disturb training).
        """
        options = options or LafiteSampleOptions()
        condition = (conditions.require_embeddings("LAFITE") if hasattr(conditions, "prompts")
                     else conditions)                                   # [B, c]
        if condition.ndim != 2 or condition.shape[0] != len(seeds):
            raise ValueError(f"sample: condition must be [len(seeds)={len(seeds)}, "
                             f"{self.config.c_dim}], got {tuple(condition.shape)}")
        if condition.shape[1] != self.config.c_dim:
            raise ValueError(f"sample: condition has {condition.shape[1]} dims, the model "
                             f"expects c_dim={self.config.c_dim}")
        G = self.G_ema
        device = next(G.parameters()).device
        c = F.normalize(condition.float(), dim=-1).to(device) * self.config.g_condition_gain
        z = torch.from_numpy(np.stack([np.random.RandomState(int(s)).randn(self.config.z_dim)
                                       for s in seeds])).float().to(device)     # [B, z]
        psi, mode = options.truncation_psi, options.noise_mode
        was_training = G.training
        G.eval()
        out = []
        with torch.random.fork_rng(devices=[]):
            if mode == "random":      # per-image noise from its seed
                for i, s in enumerate(seeds):
                    torch.manual_seed(int(s))
                    out.append(G(z[i:i + 1], c[i:i + 1], truncation_psi=psi, noise_mode="random"))
            else:
                for i in range(0, len(seeds), batch_size):
                    out.append(G(z[i:i + batch_size], c[i:i + batch_size], truncation_psi=psi,
                                 noise_mode=mode))
        G.train(was_training)
        return torch.cat(out).float().clamp(-1, 1)                              # [B, 3, R, R]
