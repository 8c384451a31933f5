"""The VQGAN family: ``langfree train vqgan`` trains the image tokenizer of DALL·E on the loop.

Phases: ``main`` (encoder, quantiser, decoder: reconstruction + perceptual + VQ loss, plus the
adaptive-weighted hinge generator loss once ``disc_start`` steps have passed) and ``disc`` (the
patch discriminator's hinge loss; zero before ``disc_start`` so Adam makes no move). After each
``main`` loss the codebook monitor records the codes used and re-draws dead codes (codebook.py).
Ticks log rec loss, PSNR, perplexity and the dead-code share. No EMA: the codebook resets and
an averaged codebook do not mix (the snapshot holds ``vqgan`` itself).

Sampling: reconstructions of ``conditions.images`` when given; otherwise a decode of codes drawn
uniformly from the live codes per seed (a smoke picture of the decoder, not a generative model —
the DALL·E family is the prior).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from langfree.families.base import LossOutput, Phase, Progress, adam
from langfree.families.vqgan import loss as L
from langfree.families.vqgan.codebook import CodebookMonitor
from langfree.families.vqgan.config import VQGANConfig
from langfree.families.vqgan.networks import VQGAN

VQGAN_HINT = ("pass --vqgan RUN: a `langfree train vqgan` run or snapshot, or the output of "
              "`langfree convert taming-ckpt IN.ckpt OUT`")


@dataclass(frozen=True)
class VQGANSampleOptions:
    """Nothing to choose: sampling reconstructs reference images, or decodes random codes."""


class VQGANFamily:
    name = "vqgan"
    Config = VQGANConfig
    SampleOptions = VQGANSampleOptions

    def __init__(self, config: VQGANConfig, encoder: Any = None):
        self.config, self.encoder = config, encoder
        self.vqgan = VQGAN(config)
        self.monitor = CodebookMonitor(config.n_embed, config.dead_after, config.dead_check)
        self.discriminator = L.PatchDiscriminator(config.disc_ndf, config.disc_layers)
        # built here, not in loss: its weights come from a local file named in the config
        self.perceptual = (L.PerceptualLoss(config.perceptual_path)
                           if config.perceptual_weight > 0 else None)
        self._optimizers: dict[str, torch.optim.Optimizer] | None = None

    # ------------------------------------------------------------------ structure
    @property
    def needs(self) -> frozenset[str]:
        return frozenset({"image"})

    def modules(self) -> dict[str, nn.Module]:
        mods = {"vqgan": self.vqgan, "monitor": self.monitor, "discriminator": self.discriminator}
        if self.perceptual is not None:
            mods["perceptual"] = self.perceptual
        return mods

    def references(self) -> dict:
        if self.perceptual is None:
            return {}
        from langfree.data.sidecar import tensor_digest
        from langfree.families.base import Reference

        return {"perceptual": Reference(spec=str(self.config.perceptual_path),
                                        digest=tensor_digest(self.perceptual))}

    def snapshot_modules(self) -> tuple[str, ...]:
        return ("vqgan",)

    def ema_pairs(self) -> list[tuple[str, str]]:
        return []

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        if self._optimizers is None:
            cfg = self.config
            self._optimizers = {
                "main": adam(self.vqgan.parameters(), cfg.lr, cfg.betas, decoupled=False),
                "disc": adam(self.discriminator.parameters(), cfg.lr, cfg.betas, decoupled=False),
            }
        return self._optimizers

    def phases(self) -> list[Phase]:
        return [Phase("main", ("vqgan",), "main"), Phase("disc", ("discriminator",), "disc")]

    # ------------------------------------------------------------------ losses
    def _images(self, batch: dict[str, Any]) -> torch.Tensor:
        x = batch["image"]  # (B, 3, R, R) in [-1, 1]
        if x.shape[-1] != self.config.resolution:
            raise ValueError(f"batch images are {x.shape[-1]} px, the VQGAN is "
                             f"{self.config.resolution} px; use an archive at that resolution or "
                             f"--set resolution={x.shape[-1]}")
        return x

    def disc_on(self, progress: Progress) -> bool:
        return progress.step >= self.config.disc_start

    def loss(self, phase: Phase, nets: dict[str, nn.Module], batch: dict[str, Any],
             progress: Progress) -> LossOutput:
        cfg, x = self.config, self._images(batch)
        vq = nets["vqgan"]
        if phase.name == "main":
            rec, vq_loss, codes, z_e = vq(x)  # (B,3,R,R), scalar, (B,N), (B,D,h,w)
            nll = L.reconstruction(rec, x, cfg.rec_loss)
            if self.perceptual is not None:
                nll = nll + cfg.perceptual_weight * nets["perceptual"](rec, x)
            loss = nll + cfg.codebook_weight * vq_loss
            stats = {"rec": nll.detach(), "vq": vq_loss.detach(), "psnr": L.psnr(rec.detach(), x)}
            if self.disc_on(progress):
                g = -nets["discriminator"](rec).mean()
                last = vq.decoder.conv_out.weight
                lam = (L.adaptive_weight(nll, g, last, cfg.disc_weight) if cfg.adaptive_weight
                       else torch.tensor(cfg.disc_weight, device=x.device))
                loss = loss + lam * g
                stats.update(g_adv=g.detach(), disc_lambda=lam)
            # the embedding reference of the live module (the loop's copy) gets the resets
            stats.update(nets["monitor"].update(codes, z_e, vq.quantize.embedding.weight.data))
            return LossOutput(loss, stats)
        if phase.name == "disc":
            d = nets["discriminator"]
            if not self.disc_on(progress):  # zero loss, zero gradients: Adam does not move
                return LossOutput(sum(0.0 * p.sum() for p in d.parameters()), {})
            with torch.no_grad():
                rec = vq(x)[0]
            loss = L.hinge_d_loss(d(x), d(rec))
            return LossOutput(loss, {"d_hinge": loss.detach()})
        raise ValueError(f"VQGAN has no phase {phase.name!r}")

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, conditions: Any, seeds: list[int], options: Any = None) -> torch.Tensor:
        vq = self.vqgan
        was = vq.training
        vq.eval()
        device = next(vq.parameters()).device
        images = getattr(conditions, "images", None)
        if images is not None:
            out = vq(images.to(device))[0]
        else:
            live = (~self.monitor.dead()).nonzero().squeeze(1).cpu()
            live = live if len(live) else torch.arange(self.config.n_embed)
            n = self.config.grid ** 2
            codes = torch.stack([live[torch.randint(len(live), (n,),
                                 generator=torch.Generator().manual_seed(int(s)))] for s in seeds])
            out = vq.decode_codes(codes.to(device))
        vq.train(was)
        return out.clamp(-1, 1)


def load_vqgan(spec: str | Path, device: str | torch.device = "cpu") -> VQGAN:
    """A frozen VQGAN from a vqgan run dir or snapshot (trained or converted)."""
    from langfree.checkpoint import SnapshotError, load_snapshot

    if not spec:
        raise ValueError(f"no VQGAN given: {VQGAN_HINT}")
    try:
        family = load_snapshot(spec, encoder=None, device=device)
    except (SnapshotError, FileNotFoundError) as exc:
        raise ValueError(f"cannot load VQGAN {spec}: {exc}; {VQGAN_HINT}") from None
    if getattr(family, "name", None) != "vqgan":
        raise ValueError(f"{spec} is a {getattr(family, 'name', '?')} snapshot: {VQGAN_HINT}")
    return family.vqgan.eval().requires_grad_(False)
