"""The MaskDiT family on the one training loop (docs/ENGINE_V2.md).

Data: a ``latents`` sidecar (posterior mean and std of each image through the VAE, and of its
x-flip when ``mirror`` is on) made once per (archive, VAE), so every step draws fresh latents
mean + std·ε as MaskDiT's LMDB pipeline does; the encoder's ``image_emb`` (and ``text_emb`` when
``mixing_prob`` < 1). One phase, ``main``: the EDM + MAE loss of ``loss.maskdit_loss`` at the
mask ratio the schedule gives for the run's progress. Stages: the masked run, then a mask-0
fine-tune started with ``--init-from`` its snapshot (preset ``*-finetune``).

Sampling: ``conditions.embeddings`` (the prompts' text embeddings; the thesis's language-free
inference), EDM Heun from each seed's own generator, classifier-free guidance against the zero
condition, VAE decode. The VAE is a reference (recorded by spec and digest, never copied).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from langfree.families.base import EMA, LossOutput, LRSchedule, Phase, Progress, Reference, adam
from langfree.families.maskdit import loss as L
from langfree.families.maskdit.config import MaskDiTConfig, MaskDiTSampleOptions
from langfree.families.maskdit.networks import denoiser_from_config
from langfree.families.maskdit.sampler import edm_heun, seeded_noise
from langfree.families.vae.latent_space import VAE_HINT, LatentSpace, load_vae

SAMPLE_BATCH = 64  # images per denoiser batch when sampling (guidance doubles it); 1.2x the
# images/s of 16 on this CPU, the same images (each depends only on its seed)


class MaskDiTFamily:
    name = "maskdit"
    Config = MaskDiTConfig
    SampleOptions = MaskDiTSampleOptions
    sample_batch = SAMPLE_BATCH

    def __init__(self, config: MaskDiTConfig, encoder: Any = None):
        self.config, self.encoder = config, encoder
        self.net = denoiser_from_config(config)
        self.net_ema = copy.deepcopy(self.net).eval().requires_grad_(False)
        self.vae: LatentSpace | None = None  # loaded by prepare / load_references
        self._vae_digest: str | None = None
        self._optimizers: dict[str, torch.optim.Optimizer] | None = None

    # ------------------------------------------------------------------ the VAE
    def load_vae(self, spec: str | None = None, device: str | torch.device = "cpu") -> LatentSpace:
        vae = load_vae(spec or self.config.vae, device)
        cfg = self.config
        if (vae.channels, vae.downsample) != (cfg.latent_channels, cfg.latent_downsample):
            raise ValueError(f"VAE {vae.spec} has {vae.channels}-channel latents at factor "
                             f"{vae.downsample}, the model expects {cfg.latent_channels} at "
                             f"{cfg.latent_downsample}; pass the VAE the model was built for")
        self.vae, self._vae_digest = vae, None
        return vae

    def load_references(self, specs: dict[str, str]) -> None:
        if "vae" in specs:
            self.load_vae(specs["vae"])

    def _require_vae(self) -> LatentSpace:
        if self.vae is None:
            raise ValueError(f"the MaskDiT model has no VAE loaded: {VAE_HINT}")
        return self.vae

    @property
    def scale(self) -> float:
        """Latent scaling factor: the config's, else the VAE's."""
        if self.config.latent_scale is not None:
            return self.config.latent_scale
        return self._require_vae().scale

    def vae_digest(self) -> str:
        from langfree.data.sidecar import tensor_digest

        if self._vae_digest is None:
            self._vae_digest = tensor_digest(self._require_vae().module)
        return self._vae_digest

    def references(self) -> dict[str, Reference]:
        if self.vae is None:
            return {}
        return {"vae": Reference(spec=self.vae.spec, digest=self.vae_digest())}

    def producers(self) -> dict[str, Any]:
        from langfree.data.sidecar import Producer

        vae, mirror = self._require_vae(), self.config.mirror

        def encode(images: torch.Tensor) -> dict[str, torch.Tensor]:
            device = next(vae.module.parameters()).device
            x = images.to(device, torch.float32) / 127.5 - 1  # uint8 -> [-1, 1]
            mean, std = vae.encode(x)  # (B, C, h, w) each, unscaled
            out = {"latents_mean": mean, "latents_std": std}
            if mirror:
                mean_f, std_f = vae.encode(x.flip(-1))
                out.update(latents_mean_flip=mean_f, latents_std_flip=std_f)
            return out

        return {"latents": Producer(kind="latents", encode=encode, batch_size=32,
                                    fingerprint=f"{self.vae_digest()}{'m' if mirror else ''}")}

    def need_hint(self, need: str) -> str:
        return VAE_HINT

    # ------------------------------------------------------------------ structure
    @property
    def needs(self) -> frozenset[str]:
        needs = {"latents", "image_emb"}
        if self.config.mixing_prob < 1:
            needs |= {"text_emb", "has_caption"}
        return frozenset(needs)

    @property
    def needs_captions(self) -> bool:
        return self.config.mixing_prob < 1

    def modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"net": self.net, "net_ema": self.net_ema}
        if self.vae is not None:
            mods["vae"] = self.vae.module
        return mods

    def snapshot_modules(self) -> tuple[str, ...]:
        return ("net_ema",)

    def ema_pairs(self) -> list[tuple[str, str]]:
        return [("net", "net_ema")]

    def default_ema(self, batch: int) -> EMA:
        return EMA(decay=self.config.ema_decay)

    def lr_schedule(self) -> LRSchedule:
        return LRSchedule(warmup_kimg=self.config.lr_rampup_kimg)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        if self._optimizers is None:
            cfg = self.config
            self._optimizers = {"main": adam(self.net.parameters(), cfg.lr, cfg.betas,
                                             weight_decay=cfg.weight_decay)}
        return self._optimizers

    def phases(self) -> list[Phase]:
        return [Phase("main", ("net",), "main")]

    # ------------------------------------------------------------------ training
    def latents(self, batch: dict[str, Any]) -> torch.Tensor:
        """Fresh latents mean + std·ε from the sidecar (x-flipped for a random half when
        ``mirror``), scaled: [N, C, h, w]."""
        mean, std = batch["latents_mean"].float(), batch["latents_std"].float()
        if self.config.mirror:
            flip = (torch.rand(mean.shape[0], device=mean.device) < 0.5)[:, None, None, None]
            mean = torch.where(flip, batch["latents_mean_flip"].float(), mean)
            std = torch.where(flip, batch["latents_std_flip"].float(), std)
        want = (self.config.latent_channels, self.config.latent_size, self.config.latent_size)
        if tuple(mean.shape[1:]) != want:
            raise ValueError(f"sidecar latents are {list(mean.shape[1:])}, the model expects "
                             f"{list(want)}; use the VAE and resolution the model was built for")
        return (mean + std * torch.randn_like(std)) * self.scale

    def condition(self, batch: dict[str, Any]) -> torch.Tensor:
        """The thesis's training condition: augmented image embedding (or, with probability
        1 - mixing_prob, the caption embedding), then 10 % nulls. [N, D]."""
        cfg = self.config
        c = L.augment_condition(batch["image_emb"].float(), cfg.cond_noise)
        c = L.mix_conditions(c, batch.get("text_emb"), batch.get("has_caption"), cfg.mixing_prob)
        return L.drop_condition(c, cfg.cond_dropout)

    def mask_ratio(self, progress: Progress) -> float:
        cfg = self.config
        return L.mask_ratio_at(progress.fraction, cfg.mask_ratio, cfg.mask_schedule,
                               cfg.mask_ratio_min, cfg.mask_cosine_power)

    def loss(self, phase: Phase, nets: dict[str, nn.Module], batch: dict[str, Any],
             progress: Progress) -> LossOutput:
        if phase.name != "main":
            raise ValueError(f"MaskDiT has no phase {phase.name!r}")
        cfg = self.config
        ratio = self.mask_ratio(progress)
        total, stats = L.maskdit_loss(nets["net"], self.latents(batch), self.condition(batch),
                                      mask_ratio=ratio, mae_weight=cfg.mae_weight,
                                      p_mean=cfg.p_mean, p_std=cfg.p_std)
        stats["mask_ratio"] = ratio
        return LossOutput(total, stats)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample_latents(self, cond: torch.Tensor, seeds: list[int],
                       options: MaskDiTSampleOptions | None = None) -> torch.Tensor:
        """[B, D] conditions + seeds -> scaled latents [B, C, h, w] from the EMA denoiser."""
        options = options or MaskDiTSampleOptions()
        cfg = self.config
        if cond.ndim != 2 or cond.shape != (len(seeds), cfg.cond_dim):
            raise ValueError(f"sample: conditions must be [len(seeds)={len(seeds)}, "
                             f"cond_dim={cfg.cond_dim}], got {list(cond.shape)}")
        net = self.net_ema
        device = next(net.parameters()).device
        was_training = net.training
        net.eval()
        shape = (cfg.latent_channels, cfg.latent_size, cfg.latent_size)
        out = []
        for i in range(0, len(seeds), SAMPLE_BATCH):
            noise = seeded_noise(seeds[i:i + SAMPLE_BATCH], shape).to(device)
            c = F.normalize(cond[i:i + SAMPLE_BATCH].float(), dim=1).to(device)
            out.append(edm_heun(net, noise, c, steps=options.steps,
                                guidance_scale=options.guidance_scale))
        net.train(was_training)
        return torch.cat(out)

    @torch.no_grad()
    def sample(self, conditions: Any, seeds: list[int],
               options: MaskDiTSampleOptions | None = None) -> torch.Tensor:
        """Conditions (their ``embeddings``: prompt text embeddings, or reference image
        embeddings) + one seed each -> [B, 3, H, W] in [-1, 1]."""
        cond = (conditions.require_embeddings("MaskDiT") if hasattr(conditions, "prompts")
                else conditions)
        vae = self._require_vae()
        z = self.sample_latents(cond, seeds, options) / self.scale
        device = next(vae.module.parameters()).device
        return torch.cat([vae.decode(z[i:i + SAMPLE_BATCH].to(device)).float()
                          for i in range(0, len(z), SAMPLE_BATCH)])
