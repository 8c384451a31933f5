"""VQGAN losses (Esser et al. 2021, eq. 5-7): reconstruction + VQ + optional perceptual, and a
patch discriminator with hinge loss switched on after ``disc_start`` steps.

Generator side: L = rec + perceptual_weight·LPIPS + codebook_weight·vq + λ·disc_factor·(-D(x̂)),
λ = ||∇_L nll|| / (||∇_L g|| + 1e-4) at the last decoder layer L (``decoder.conv_out.weight``),
clamped to [0, 1e4] and scaled by ``disc_weight`` (the paper's adaptive weight; constant
``disc_weight`` when ``adaptive_weight`` is off). Discriminator side: hinge
mean(relu(1 - D(x))) + mean(relu(1 + D(x̂))), halved as in taming.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from langfree.families.base import reconstruction_error


def reconstruction(x_rec: torch.Tensor, x: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-pixel reconstruction loss, mean over everything ([B,3,H,W] in [-1, 1])."""
    return reconstruction_error(x, x_rec, kind)


def psnr(x_rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean PSNR in dB of images in [-1, 1] (peak-to-peak 2), after clamping the reconstruction."""
    mse = (x_rec.clamp(-1, 1) - x).square().mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return (10 * torch.log10(4.0 / mse)).mean()


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix): conv4×4/2 stack → one logit per overlapping patch. BatchNorm as in
    taming's NLayerDiscriminator; init N(0, 0.02) (BN weight N(1, 0.02))."""

    def __init__(self, ndf: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = ndf
        for n in range(1, n_layers + 1):
            c_out = ndf * min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(c, c_out, 4, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                       nn.LeakyReLU(0.2)]
            c = c_out
        layers.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)  # (B, 1, h', w') patch logits


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean())


def adaptive_weight(nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    disc_weight: float) -> torch.Tensor:
    """λ = disc_weight · ||∇nll|| / (||∇g|| + 1e-4) at ``last_layer``, clamped to [0, 1e4];
    detached (it is a scale, not a path for gradients)."""
    (g_nll,) = torch.autograd.grad(nll, last_layer, retain_graph=True)
    (g_g,) = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
    return (g_nll.norm() / (g_g.norm() + 1e-4)).clamp(0.0, 1e4).detach() * disc_weight


class PerceptualLoss(nn.Module):
    """LPIPS-style distance (Zhang et al. 2018): VGG16 features at relu1_2, 2_2, 3_3, 4_3, 5_3,
    unit-normalised per channel, squared differences weighted by 1×1 ``lin{k}`` layers, spatially
    averaged, summed over layers.

    Weights come from ONE local safetensors file (nothing is downloaded): ``features.{i}.*``
    (torchvision ``vgg16().features`` names) and ``lin{k}.weight`` [1, C_k, 1, 1]. Frozen.
    """

    # indices of the ReLU after conv1_2, 2_2, 3_3, 4_3, 5_3 in torchvision's vgg16.features
    TAPS = (3, 8, 15, 22, 29)
    WIDTHS = (64, 128, 256, 512, 512)
    # ImageNet mean/std expressed for inputs in [-1, 1] (LPIPS' ScalingLayer constants)
    SHIFT = (-0.030, -0.088, -0.188)
    SCALE = (0.458, 0.448, 0.450)

    def __init__(self, weights_path: str | Path) -> None:
        super().__init__()
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"perceptual weights {path} not found: pass a local safetensors file holding "
                "torchvision vgg16 'features.*' and LPIPS 'lin0..lin4.weight', or set "
                "perceptual_weight 0 (nothing is downloaded)")
        from safetensors.torch import load_file

        sd = load_file(str(path))
        cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
        layers: list[nn.Module] = []
        c = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
                c = v
        self.features = nn.Sequential(*layers)
        self.lin = nn.ModuleList(nn.Conv2d(w, 1, 1, bias=False) for w in self.WIDTHS)
        want = {f"features.{k}" for k in self.features.state_dict()} | {
            f"lin{i}.weight" for i in range(5)}
        missing = sorted(want - set(sd))
        if missing:
            raise ValueError(f"{path} lacks perceptual weights {missing[:4]}... "
                             f"({len(missing)} missing)")
        self.features.load_state_dict({k[9:]: v for k, v in sd.items() if k.startswith("features.")})
        for i, lin in enumerate(self.lin):
            lin.weight.data.copy_(sd[f"lin{i}.weight"])
        self.register_buffer("shift", torch.tensor(self.SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(self.SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, h = [], (x - self.shift) / self.scale
        for i, layer in enumerate(self.features[: self.TAPS[-1] + 1]):
            h = layer(h)
            if i in self.TAPS:
                out.append(h / (h.square().sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [-1, 1] twice -> mean LPIPS distance (scalar)."""
        return sum(lin((fa - fb).square()).mean() for lin, fa, fb in
                   zip(self.lin, self._taps(a), self._taps(b)))
