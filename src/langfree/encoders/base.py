"""The one interface to a joint text-image space (CLIP-like)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # torch is imported lazily so that `langfree --help` stays fast
    import torch


SPEC_PREFIX = "open_clip:"
ENCODER_JSON = "encoder.json"  # marks a langfree encoder directory (see small_clip.py)


class EncoderUnavailable(RuntimeError):
    """The requested encoder's weights or spec cannot be used here; the message says what to pass."""


@runtime_checkable
class TextImageEncoder(Protocol):
    """A joint text-image embedding space.

    Contract (every family and metric relies on it):
      - ``spec``: the string that rebuilds this encoder with ``load_encoder(spec)``; recorded
        in run configs and snapshots.
      - ``embed_dim``: D.
      - ``image_size``: the square input size the image tower expects (resize happens inside).
      - ``encode_text(list[str]) -> [B, D]`` float32, L2-normalised.
      - ``encode_image([B, 3, H, W] float in [-1, 1]) -> [B, D]`` float32, L2-normalised; any H, W
        (resizing and the CLIP mean/std normalisation live only inside the encoder). Does NOT wrap
        itself in no_grad: gradients flow to the input image (the LAFITE CLIP loss needs that);
        the encoder's own parameters are frozen (requires_grad False).
      - ``to(device)`` returns self.
    """

    spec: str
    embed_dim: int
    image_size: int

    def encode_text(self, texts: list[str]) -> torch.Tensor: ...

    def encode_image(self, images: torch.Tensor) -> torch.Tensor: ...

    def to(self, device: torch.device | str) -> TextImageEncoder: ...
