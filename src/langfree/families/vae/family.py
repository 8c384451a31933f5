"""The VAE family: ``langfree train vae`` trains the small KL autoencoder on the one loop.

Phases: ``main`` (encoder + decoder: L1 or MSE + kl_weight·KL, + disc_weight·hinge G loss once the
discriminator is on) and, when ``disc_start`` is set, ``disc`` (the PatchGAN's hinge loss; a
zero loss before ``disc_start``, so its optimiser makes no move). Each tick logs PSNR and the
statistics of posterior means; the snapshot holds the EMA autoencoder with its measured latent
std, from which ``latent_scale()`` gives the scaling factor a latent diffusion model uses.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from langfree.families.base import EMA, LossOutput, Phase, Progress, adam
from langfree.families.vae import loss as L
from langfree.families.vae.config import VAEConfig
from langfree.families.vae.networks import KLAutoencoder, PatchDiscriminator


@dataclass(frozen=True)
class VAESampleOptions:
    """Nothing to choose: sampling reconstructs reference images, or decodes prior latents."""


class VAEFamily:
    name = "vae"
    Config = VAEConfig
    SampleOptions = VAESampleOptions

    def __init__(self, config: VAEConfig, encoder: Any = None):
        self.config, self.encoder = config, encoder
        self.autoencoder = KLAutoencoder(config.width, config.channel_mult, config.latent_channels)
        self.autoencoder_ema = copy.deepcopy(self.autoencoder).eval().requires_grad_(False)
        self.discriminator = (PatchDiscriminator(config.disc_width, config.disc_layers)
                              if config.disc_start is not None else None)
        self._optimizers: dict[str, torch.optim.Optimizer] | None = None

    # ------------------------------------------------------------------ structure
    @property
    def needs(self) -> frozenset[str]:
        return frozenset({"image"})

    def modules(self) -> dict[str, nn.Module]:
        mods = {"autoencoder": self.autoencoder, "autoencoder_ema": self.autoencoder_ema}
        if self.discriminator is not None:
            mods["discriminator"] = self.discriminator
        return mods

    def snapshot_modules(self) -> tuple[str, ...]:
        return ("autoencoder_ema",)

    def ema_pairs(self) -> list[tuple[str, str]]:
        return [("autoencoder", "autoencoder_ema")]

    def default_ema(self, batch: int) -> EMA:
        return EMA(decay=self.config.ema_decay)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        if self._optimizers is None:
            cfg = self.config
            self._optimizers = {"main": adam(self.autoencoder.parameters(), cfg.lr, cfg.betas,
                                             decoupled=False)}
            if self.discriminator is not None:
                self._optimizers["disc"] = adam(self.discriminator.parameters(), cfg.lr,
                                                cfg.betas, decoupled=False)
        return self._optimizers

    def phases(self) -> list[Phase]:
        phases = [Phase("main", ("autoencoder",), "main")]
        if self.discriminator is not None:
            phases.append(Phase("disc", ("discriminator",), "disc"))
        return phases

    def latent_scale(self) -> float:
        """Multiply latents by this to reach unit std: the config's, else 1 / measured std."""
        if self.config.scale is not None:
            return float(self.config.scale)
        std = float(self.autoencoder_ema.latent_std)
        return 1.0 / std if std > 0 else 1.0

    # ------------------------------------------------------------------ losses
    def _images(self, batch: dict[str, Any]) -> torch.Tensor:
        x = batch["image"]  # (N, 3, H, W) in [-1, 1]
        if x.shape[-1] != self.config.resolution:
            raise ValueError(f"batch images are {x.shape[-1]} px, the VAE is "
                             f"{self.config.resolution} px; use an archive at that resolution or "
                             f"--set resolution={x.shape[-1]}")
        if self.config.mirror:
            flip = torch.rand(x.shape[0], device=x.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x

    def _disc_on(self, progress: Progress) -> bool:
        start = self.config.disc_start
        return start is not None and progress.step >= start

    def loss(self, phase: Phase, nets: dict[str, nn.Module], batch: dict[str, Any],
             progress: Progress) -> LossOutput:
        cfg, x = self.config, self._images(batch)
        ae = nets["autoencoder"]
        if phase.name == "main":
            recon, post = ae(x)  # (N, 3, H, W), posterior over (N, C, h, w)
            rec = L.reconstruction_loss(x, recon, cfg.rec_loss)
            kl = L.kl_loss(post, x[0].numel())
            loss = rec + cfg.kl_weight * kl
            stats = {"rec": rec.detach(), "kl": kl.detach(), "psnr": L.psnr(x, recon.detach())}
            if self._disc_on(progress):
                g = L.hinge_g_loss(nets["discriminator"](recon))
                loss = loss + cfg.disc_weight * g
                stats["g_adv"] = g.detach()
            with torch.no_grad():
                std = post.mean.std()
                ae.latent_std.mul_(0.99).add_(0.01 * std)
            stats.update(latent_mean=post.mean.mean().detach(), latent_std=std.detach())
            return LossOutput(loss, stats)
        if phase.name == "disc":
            d = nets["discriminator"]
            if not self._disc_on(progress):  # zero loss, zero gradients: Adam does not move
                return LossOutput(sum(0.0 * p.sum() for p in d.parameters()), {})
            with torch.no_grad():
                recon, _ = ae(x)
            loss = L.hinge_d_loss(d(x), d(recon))
            return LossOutput(loss, {"d_hinge": loss.detach()})
        raise ValueError(f"VAE has no phase {phase.name!r}")

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, conditions: Any, seeds: list[int], options: Any = None) -> torch.Tensor:
        """Reconstructions (posterior means) of ``conditions.images`` when given, else decodes
        of prior latents N(0, latent_std²) drawn from each seed's generator: [B, 3, H, W]."""
        ae = self.autoencoder_ema
        device = next(ae.parameters()).device
        images = getattr(conditions, "images", None)
        if images is not None:
            return ae.decode(ae.encode(images.to(device)).mean).clamp(-1, 1)
        k, r = ae.downsample, self.config.resolution
        shape = (self.config.latent_channels, r // k, r // k)
        z = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s)))
                         for s in seeds]).to(device) * ae.latent_std
        return ae.decode(z).clamp(-1, 1)
