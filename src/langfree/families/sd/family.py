"""SDFamily: train a small Stable Diffusion on a captioned archive, in two stages of one phase.

Stage 1 (steps < vae_steps): the KL autoencoder, L = ‖D(z) − x‖² + kl_weight·KL(q(z|x) ‖ N(0, I))
(LDM §3; SD adds a perceptual and a GAN term at 512 px, too costly here).
Stage 2: the latent scale is fixed to 1/std(z) of the first stage-2 batch (SD's 0.18215 was
found the same way), the VAE is frozen and the UNet (and the text encoder, by default) learn
ε-prediction on SD's noise schedule, with the caption dropped to "" at ``caption_dropout`` so
classifier-free guidance works. Both stages are one phase with one AdamW: in each stage only one
side gets gradients, and AdamW skips parameters without one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from langfree.families.base import LossOutput, Phase, adam
from langfree.families.custom_diffusion.loss import noisy_latents
from langfree.families.sd.config import SDConfig, SDSampleOptions
from langfree.families.sd.pipeline import SDComponents, build_components, save_pipeline


class LatentStats(nn.Module):
    """The VAE latent scale, fixed once at the start of stage 2 (0 = not yet measured)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.zeros(()))


class SDFamily:
    name = "sd"
    Config = SDConfig
    SampleOptions = SDSampleOptions
    uses_negative_prompt = True  # classifier-free guidance against the negative prompt
    needs = frozenset({"image", "captions"})

    def __init__(self, config: SDConfig, encoder=None, seed: int = 0):
        self.config, self.encoder = config, encoder
        self.parts: SDComponents = build_components(config, seed)
        self.stats = LatentStats()
        self.parts.text_encoder.requires_grad_(config.train_text_encoder)
        self._optimizers = None

    def modules(self) -> dict[str, nn.Module]:
        return {"unet": self.parts.unet, "vae": self.parts.vae,
                "text_encoder": self.parts.text_encoder, "latent_stats": self.stats}

    def trained(self) -> tuple[str, ...]:
        return ("unet", "vae") + (("text_encoder",) if self.config.train_text_encoder else ())

    def ema_pairs(self) -> list[tuple[str, str]]:
        return []

    def optimizers(self):
        if self._optimizers is None:
            c = self.config
            groups = [{"params": list(self.parts.unet.parameters()), "lr": c.lr},
                      {"params": list(self.parts.vae.parameters()), "lr": c.vae_lr}]
            if c.train_text_encoder:
                groups.append({"params": list(self.parts.text_encoder.parameters()), "lr": c.lr})
            self._optimizers = {"main": adam(groups, c.lr, weight_decay=c.weight_decay)}
        return self._optimizers

    def phases(self) -> list[Phase]:
        return [Phase("main", self.trained(), "main", clip_grad_norm=self.config.clip_grad_norm)]

    # ------------------------------------------------------------------ losses
    def vae_loss(self, vae, x: torch.Tensor) -> LossOutput:
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample()).sample                          # (B, 3, H, W)
        mse = (rec - x).square().mean()
        kl = posterior.kl().mean() / x[0].numel()                            # per pixel value
        return LossOutput(mse + self.config.kl_weight * kl, {"vae/mse": mse.detach(),
                                                             "vae/kl": kl.detach()})

    def unet_loss(self, nets, x: torch.Tensor, captions: list[str]) -> LossOutput:
        with torch.no_grad():
            z = nets["vae"].encode(x).latent_dist.sample()                   # (B, C, h, w)
            stats = nets["latent_stats"]
            if float(stats.scale) == 0.0:
                stats.scale.fill_(1.0 / float(z.std().clamp(min=1e-3)))
            z = z * stats.scale
        drop = torch.rand(len(captions)) < self.config.caption_dropout
        captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        ids = self.parts.tokenizer(captions, padding="max_length", truncation=True,
                                   max_length=self.parts.tokenizer.model_max_length,
                                   return_tensors="pt").input_ids.to(x.device)
        hidden = nets["text_encoder"](ids)[0]                                # (B, 77, D)
        x_t, t, target = noisy_latents(self.parts.scheduler, z)
        pred = nets["unet"](x_t, t, encoder_hidden_states=hidden).sample
        loss = (pred - target).square().mean()
        return LossOutput(loss, {"unet/mse": loss.detach()})

    def loss(self, phase, nets, batch, progress) -> LossOutput:
        x = batch["image"]                                                   # (B, 3, H, W) [-1, 1]
        if progress.step < self.config.vae_steps:
            return self.vae_loss(nets["vae"], x)
        captions = batch.get("caption") or batch.get("captions") or [""] * len(x)
        return self.unet_loss(nets, x, list(captions))

    # ------------------------------------------------------------------ sampling and files
    def _with_scale(self) -> SDComponents:
        scale = float(self.stats.scale) or 1.0
        self.parts.vae.register_to_config(scaling_factor=scale)
        return self.parts

    @torch.no_grad()
    def sample(self, conditions, seeds, options=None) -> torch.Tensor:
        from langfree.families.sd.sampler import sample

        o = options or SDSampleOptions()
        return sample(self._with_scale(), conditions.require_prompts(self.name), list(seeds),
                      self.config.resolution, o.num_inference_steps, o.guidance_scale, o.eta,
                      o.scheduler, conditions.negative_prompts)

    def export(self, dirpath: Path) -> None:
        """The diffusers layout: StableDiffusionPipeline.from_pretrained(dirpath) loads it."""
        save_pipeline(self._with_scale(), dirpath)


def configure(data: dict, ctx) -> dict:
    """resolution from the archive (TrainSpec.configure)."""
    archive = getattr(ctx, "archive", None)
    if archive is not None and "resolution" not in data:
        data["resolution"] = int(archive.resolution)
    return data
