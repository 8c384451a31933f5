"""Feature extractors for distribution metrics (FID, KID, IS).

An extractor maps uint8 images [N, 3, H, W] to ``{"features": [N, F] float32}`` plus
``"logits": [N, C]`` when it has a classifier head (Inception Score needs one). Every metric
result names the extractor it used (``extractor``, ``inception``), because FID on another network
is a different number: comparable across runs of langfree, never with published Inception FID.

Inception weights are NEVER downloaded here (this machine has no network; torchmetrics and
torch-fidelity would try). Give a local file instead: the 2015-12-05 TF Inception-v3 port as a
PyTorch state dict, e.g. torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` (same file
as pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``). Without it FID/KID run on the
encoder's image tower and say so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from langfree.encoders.base import TextImageEncoder

INCEPTION_NAME = "inception-v3-2015-12-05"
# torch-fidelity's layer names; 'logits_unbiased' is the fc layer without bias, what IS uses.
_INCEPTION_LAYERS = ["2048", "logits_unbiased"]


class ExtractorUnavailable(RuntimeError):
    """The requested feature extractor cannot be built (missing or incompatible weights)."""


@dataclass
class FeatureExtractor:
    """name: recorded in every result; inception: True only for the real Inception-v3 weights;
    fn: uint8 [N, 3, H, W] -> {"features": [N, F], optional "logits": [N, C]}."""

    name: str
    inception: bool
    fn: Callable[[torch.Tensor], dict[str, torch.Tensor]]
    has_logits: bool = False

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"extractor {self.name} expects uint8 [N, 3, H, W], "
                             f"got {images.dtype} {list(images.shape)}")
        out = self.fn(images)
        return {k: v.float().cpu() for k, v in out.items()}


def _check_inception_file(path: Path) -> None:
    """Open the file with ``weights_only=True`` (refuses pickled code) and check the key names,
    so that a wrong file fails here with a message instead of deep inside the library."""
    if not path.is_file():
        raise ExtractorUnavailable(f"Inception weights file {path} does not exist; pass the "
                                   "2015-12-05 Inception-v3 state dict (.pth) or omit --inception")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure means the file is unusable here
        raise ExtractorUnavailable(f"cannot read {path} as a tensor-only PyTorch state dict "
                                   f"({type(exc).__name__}: {exc}); pass torch-fidelity's "
                                   "weights-inception-2015-12-05-6726825d.pth") from exc
    needed = {"Conv2d_1a_3x3.conv.weight", "Mixed_7c.branch_pool.conv.weight", "fc.weight"}
    if not isinstance(state, dict) or not needed <= set(state):
        raise ExtractorUnavailable(f"{path} is not an Inception-v3 (torch-fidelity layout) state "
                                   f"dict: keys {sorted(needed)} missing")


def inception_extractor(path: str | Path, device: str | torch.device = "cpu") -> FeatureExtractor:
    """Inception-v3 (TF 2015-12-05 port, torch-fidelity's implementation) from a local file.

    Costs ~10 images/s on this 2-core CPU (every image is resized to 299x299)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = Path(path)
    _check_inception_file(path)
    # The library loads the file again itself; the check above already proved it holds only
    # tensors, so that second load executes nothing.
    net = FeatureExtractorInceptionV3("inception-v3-compat", list(_INCEPTION_LAYERS),
                                      feature_extractor_weights_path=str(path)).to(device)

    def fn(images: torch.Tensor) -> dict[str, torch.Tensor]:
        pool, logits = net(images.to(device))  # [N, 2048], [N, 1008]
        return {"features": pool, "logits": logits}

    return FeatureExtractor(INCEPTION_NAME, inception=True, fn=fn, has_logits=True)


def encoder_extractor(encoder: TextImageEncoder) -> FeatureExtractor:
    """The encoder's image tower: L2-normalised embeddings [N, D] as FID/KID features
    (FID on CLIP features, cf. Kynkaanniemi et al. 2023). Not Inception FID."""

    def fn(images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images.float() / 127.5 - 1.0  # uint8 -> [-1, 1], the encoder contract
        return {"features": encoder.encode_image(x)}

    return FeatureExtractor(f"clip:{encoder.spec}", inception=False, fn=fn)


def resolve_extractor(inception: str | Path | None, encoder: TextImageEncoder | None,
                      device: str | torch.device = "cpu") -> FeatureExtractor:
    """Inception from ``inception`` when given, else the encoder's image tower. Never downloads."""
    if inception is not None:
        return inception_extractor(inception, device)
    if encoder is None:
        raise ExtractorUnavailable("FID/KID need a feature extractor: pass --inception PATH "
                                   "(local Inception-v3 weights) or an encoder (--encoder SPEC)")
    return encoder_extractor(encoder)
