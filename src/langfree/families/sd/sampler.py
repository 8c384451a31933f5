"""Text-to-image sampling of an SD-layout pipeline with classifier-free guidance.

The same computation as ``StableDiffusionPipeline.__call__`` (encode prompt and "" → scheduler
loop over ε_uncond + w·(ε_cond − ε_uncond) → VAE decode), one row at a time so that image i
depends only on (prompt i, seeds[i], options) — batched GEMMs are not bitwise batch-invariant on
CPU. Randomness (initial latents and DDIM's η noise) comes from a per-row torch.Generator; the
global RNG is untouched.
"""

from __future__ import annotations

import torch

from langfree.families.sd.pipeline import SDComponents, sampling_scheduler


@torch.no_grad()
def encode_prompts(parts: SDComponents, prompts: list[str]) -> torch.Tensor:
    """prompts -> CLIP text hidden states [B, 77, D] (padded to the tokenizer's max length)."""
    tok = parts.tokenizer(prompts, padding="max_length", truncation=True,
                          max_length=parts.tokenizer.model_max_length, return_tensors="pt")
    device = next(parts.text_encoder.parameters()).device
    return parts.text_encoder(tok.input_ids.to(device))[0]


@torch.no_grad()
def sample(parts: SDComponents, prompts: list[str], seeds: list[int], resolution: int,
           num_inference_steps: int = 50, guidance_scale: float = 6.0, eta: float = 0.0,
           scheduler: str = "ddim", negative_prompts: list[str] | None = None) -> torch.Tensor:
    """-> [B, 3, resolution, resolution] in [-1, 1]."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    sched = sampling_scheduler(scheduler, dict(parts.scheduler.config))
    device = next(parts.unet.parameters()).device
    side = resolution // parts.vae_scale_factor
    channels = parts.unet.config.in_channels
    images = []
    for i, (prompt, seed) in enumerate(zip(prompts, seeds)):
        g = torch.Generator().manual_seed(int(seed))
        cond = encode_prompts(parts, [prompt])                                  # (1, 77, D)
        guided = guidance_scale != 1.0
        if guided:
            negative = negative_prompts[i] if negative_prompts else ""
            cond = torch.cat([encode_prompts(parts, [negative]), cond])         # (2, 77, D)
        sched.set_timesteps(num_inference_steps)
        x = torch.randn(1, channels, side, side, generator=g).to(device) * sched.init_noise_sigma
        extra = {"eta": eta, "generator": g} if scheduler == "ddim" else {}
        if scheduler == "ddpm":
            extra = {"generator": g}
        for t in sched.timesteps:
            inp = sched.scale_model_input(torch.cat([x] * 2) if guided else x, t)
            eps = parts.unet(inp, t, encoder_hidden_states=cond).sample         # (1|2, C, h, w)
            if guided:
                uncond, text = eps.chunk(2)
                eps = uncond + guidance_scale * (text - uncond)
            x = sched.step(eps, t, x, **extra).prev_sample
        decoded = parts.vae.decode(x / parts.vae.config.scaling_factor).sample  # (1, 3, H, W)
        images.append(decoded.clamp(-1, 1).float().cpu())
    return torch.cat(images)
