"""A latent space for latent diffusion: ``load_vae(spec)`` for the ``--vae SPEC`` option.

SPEC is either
  - a local diffusers ``AutoencoderKL`` directory (``config.json`` with ``"_class_name":
    "AutoencoderKL"`` and its weights, e.g. the Stable Diffusion kl-f8 VAE); the scaling factor
    is its config's ``scaling_factor`` (0.18215 for SD 1.x), or
  - a langfree VAE run directory or snapshot (``langfree train vae``); the scaling factor is
    the config's ``scale`` or the 1 / std of posterior means the run measured.

Every latent space maps images [N, 3, H, W] in [-1, 1] to posterior mean and std
[N, C, H/k, W/k] (unscaled) and decodes unscaled latents back; callers multiply by ``scale``
before diffusion and divide after. Nothing here touches the network; files are read with
safetensors only (diffusers refuses pickled weights when ``use_safetensors=True``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

VAE_HINT = ("pass --vae DIR: a local diffusers AutoencoderKL directory (config.json + "
            "diffusion_pytorch_model.safetensors, e.g. a Stable Diffusion VAE) or a langfree VAE "
            "run directory from `langfree train vae --data ARCHIVE.zip --outdir DIR`")


@dataclass
class LatentSpace:
    """A frozen autoencoder seen as a latent space.

    module: the nn.Module holding the weights (its digest identifies the latent space)
    channels / downsample: latent C and the spatial factor k
    scale: multiply latents by it to get std ≈ 1 (diffusion's data space; σ_data = 0.5 then
        holds for the per-element spread of most images)
    spec: how it was loaded (recorded in snapshots)
    """

    module: nn.Module
    channels: int
    downsample: int
    scale: float
    spec: str
    kind: str  # "diffusers" | "langfree"

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, 3, H, W] in [-1, 1] -> posterior (mean, std), each [N, C, H/k, W/k], unscaled."""
        if self.kind == "diffusers":
            dist = self.module.encode(images).latent_dist
            return dist.mean, dist.std
        post = self.module.encode(images)
        return post.mean, post.std

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Unscaled latents [N, C, h, w] -> images [N, 3, h·k, w·k] clamped to [-1, 1]."""
        if self.kind == "diffusers":
            return self.module.decode(latents).sample.clamp(-1, 1)
        return self.module.decode(latents).clamp(-1, 1)

    def to(self, device) -> LatentSpace:
        self.module.to(device)
        return self


def load_vae(spec: str | None, device: str | torch.device = "cpu") -> LatentSpace:
    """The latent space ``spec`` names; a missing or unrecognised path fails at once."""
    if not spec:
        raise ValueError(f"no VAE given: {VAE_HINT}")
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"VAE path {path} does not exist: {VAE_HINT}")
    config = path / "config.json"
    if config.is_file():
        data = json.loads(config.read_text())
        if data.get("_class_name") == "AutoencoderKL":
            return _load_diffusers(path, data, device)
    if (path / "manifest.json").is_file() or (path / "snapshots").is_dir():
        return _load_langfree(path, device)
    raise ValueError(f"{path} is neither a diffusers AutoencoderKL directory (config.json with "
                     f"\"_class_name\": \"AutoencoderKL\") nor a langfree VAE run: {VAE_HINT}")


def _load_diffusers(path: Path, data: dict, device) -> LatentSpace:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(path), use_safetensors=True)
    vae = vae.to(device).eval().requires_grad_(False)
    blocks = data.get("block_out_channels", [128, 256, 512, 512])
    return LatentSpace(module=vae, channels=int(data.get("latent_channels", 4)),
                       downsample=2 ** (len(blocks) - 1),
                       scale=float(data.get("scaling_factor", 0.18215)),
                       spec=str(path), kind="diffusers")


def _load_langfree(path: Path, device) -> LatentSpace:
    from langfree.checkpoint import load_snapshot, resolve_snapshot

    path = resolve_snapshot(path)  # a run dir -> its latest snapshot, recorded as such
    family = load_snapshot(path, encoder=None, device=device)
    if getattr(family, "name", None) != "vae":
        raise ValueError(f"{path} is a {getattr(family, 'name', '?')} snapshot, not a VAE: "
                         f"{VAE_HINT}")
    ae = family.autoencoder_ema.eval().requires_grad_(False)
    return LatentSpace(module=ae, channels=ae.latent_channels, downsample=ae.downsample,
                       scale=family.latent_scale(), spec=str(path), kind="langfree")


def vae_geometry(spec: str | None) -> tuple[int, int]:
    """(latent channels, spatial factor) of the VAE ``spec`` names, from its JSON config only
    (cheap: ``configure`` calls it before any weights are read)."""
    if not spec:
        raise ValueError(f"no VAE given: {VAE_HINT}")
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"VAE path {path} does not exist: {VAE_HINT}")
    config = path / "config.json"
    data = json.loads(config.read_text()) if config.is_file() else {}
    if data.get("_class_name") == "AutoencoderKL":
        blocks = data.get("block_out_channels", [128, 256, 512, 512])
        return int(data.get("latent_channels", 4)), 2 ** (len(blocks) - 1)
    if not (path / "manifest.json").is_file() and (path / "snapshots").is_dir():
        from langfree.checkpoint import resolve_snapshot

        path = resolve_snapshot(path)
        data = json.loads((path / "config.json").read_text())
    if data.get("family") == "vae":
        cfg = data["config"]
        return int(cfg["latent_channels"]), 2 ** (len(cfg["channel_mult"]) - 1)
    raise ValueError(f"{path} is neither a diffusers AutoencoderKL directory (config.json with "
                     f"\"_class_name\": \"AutoencoderKL\") nor a langfree VAE run: {VAE_HINT}")


@torch.no_grad()
def measure(space: LatentSpace, images: torch.Tensor, batch: int = 64) -> dict[str, float]:
    """PSNR (dB) of reconstructions from posterior means and the statistics of the means:
    what ``langfree train vae`` reports and what sets a scaling factor. images in [-1, 1]."""
    device = next(space.module.parameters()).device
    means, err, n = [], 0.0, 0
    for i in range(0, len(images), batch):
        x = images[i:i + batch].to(device)
        mean, _ = space.encode(x)
        err += (space.decode(mean) - x).square().sum().item()
        n += x.numel()
        means.append(mean.float().cpu())
    m = torch.cat(means)
    mse = max(err / max(n, 1), 1e-12)
    std = m.std().item()
    return {"psnr": 10 * math.log10(4.0 / mse), "latent_mean": m.mean().item(),
            "latent_std": std, "scale_measured": 1.0 / std if std > 0 else 1.0,
            "scale": space.scale}
