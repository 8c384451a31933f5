"""open_clip behind the one ``TextImageEncoder`` interface, and ``load_encoder`` for every spec.

Specs (recorded in run configs and snapshots, so ``load_encoder(spec)`` rebuilds the encoder):
  - ``open_clip:MODEL/TAG``        an open_clip model with a pretrained tag (``ViT-B-32/openai``);
  - ``open_clip:MODEL@/path/w.pt`` the same architecture with weights from a local file
                                   (``.safetensors``, ``.pt``, ``.bin``: tensors only, read with
                                   ``weights_only``); OpenAI's own weights need the
                                   ``-quickgelu`` name, e.g. ``ViT-B-32-quickgelu``;
  - ``/path/to/dir``               a small CLIP written by ``langfree encoder train``.

Nothing here falls back to random weights: weights that cannot be found raise
``EncoderUnavailable`` at once with the spec to pass instead. With ``HF_HUB_OFFLINE=1`` a tag
that is not in the local cache fails before any download is attempted.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from langfree.encoders.base import ENCODER_JSON, SPEC_PREFIX, EncoderUnavailable  # noqa: F401

_WHAT_TO_PASS = (
    "pass local weights as 'open_clip:MODEL@/path/to/weights.safetensors', or train the "
    "langfree small CLIP ('langfree encoder train DATA.zip --outdir DIR', e.g. on "
    "'langfree shapes') and pass DIR"
)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def clip_preprocess(images: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [-1, 1] -> [B, 3, size, size], CLIP mean/std normalised; differentiable.

    The one place resizing and normalisation happen (the small-CLIP trainer uses it too, so
    training and inference see identical inputs). mean/std: [1, 3, 1, 1] in [0, 1] units.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"encode_image expects [B, 3, H, W] in [-1, 1], got {tuple(images.shape)}")
    x = images.float()
    if x.shape[-2:] != (size, size):
        # bilinear + antialias: shrinking (256 -> 224) without aliasing; enlarging is plain bilinear
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True)  # [B, 3, S, S]
    x = (x + 1) / 2  # [-1, 1] -> [0, 1], the range CLIP's mean/std refer to
    return (x - mean.to(x.device)) / std.to(x.device)  # [B, 3, S, S]


class OpenClipEncoder:
    """A frozen open_clip model as a ``TextImageEncoder`` (see encoders/base.py).

    Deliberately not an ``nn.Module``: a family that keeps the encoder as an attribute must not
    pick up its parameters (optimisers, state dicts) or flip it to train mode.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, spec: str, identity: str,
                 image_size: int, mean, std) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.spec = spec
        self.identity = identity  # what the weights are, without file paths (for fingerprints)
        self.image_size = int(image_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.embed_dim = int(self._probe_embed_dim())
        self._weights_hash: str | None = None

    def _probe_embed_dim(self) -> int:
        proj = getattr(self.model, "text_projection", None)
        if isinstance(proj, torch.nn.Linear):
            return proj.out_features
        if isinstance(proj, torch.Tensor):
            return proj.shape[1]
        with torch.no_grad():
            return self.encode_text(["a"]).shape[1]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> OpenClipEncoder:
        self.model.to(device)
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self

    @property
    def context_length(self) -> int:
        return int(self.tokenizer.context_length)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids [B, context_length] int64 (open_clip BPE; long texts are truncated)."""
        if isinstance(texts, str):
            raise TypeError("encode_text expects a list of strings, got one string; wrap it: [text]")
        return self.tokenizer(list(texts))

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """texts (B strings) -> [B, D] float32, L2-normalised. No gradients (strings have none)."""
        tokens = self.tokenize(texts).to(self.device)  # [B, L]
        with torch.no_grad():
            return self.model.encode_text(tokens, normalize=True).float()  # [B, D]

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> [B, 3, S, S] resized and CLIP-normalised (differentiable)."""
        return clip_preprocess(images, self.image_size, self.mean, self.std)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] (any H, W) -> [B, D] float32, L2-normalised; grads reach images."""
        x = self.preprocess(images.to(self.device))
        return self.model.encode_image(x, normalize=True).float()  # [B, D]

    def weights_hash(self) -> str:
        """sha256 over every tensor (name, dtype, shape, bytes) in state-dict order; cached."""
        if self._weights_hash is None:
            h = hashlib.sha256()
            for name, t in self.model.state_dict().items():
                t = t.detach().cpu().contiguous().reshape(-1)  # 1-d: 0-d tensors cannot be viewed as bytes
                h.update(f"{name}:{t.dtype}:{t.numel()};".encode())
                h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            self._weights_hash = h.hexdigest()
        return self._weights_hash

    def __repr__(self) -> str:
        return f"OpenClipEncoder(spec={self.spec!r}, embed_dim={self.embed_dim}, image_size={self.image_size})"


def load_encoder(spec: str, device: torch.device | str = "cpu") -> OpenClipEncoder:
    """Build the encoder a spec names (dispatches through ``langfree.encoders.registry``)."""
    from langfree.encoders.registry import load_encoder as dispatch

    return dispatch(spec, device)


def load_open_clip_spec(spec: str) -> OpenClipEncoder:
    """``open_clip:MODEL/TAG`` or ``open_clip:MODEL@/path/weights`` (the registry's resolver)."""
    return _load_open_clip(spec[len(SPEC_PREFIX):])


def _load_open_clip(rest: str) -> OpenClipEncoder:
    import open_clip

    if "@" in rest:
        name, weights = rest.split("@", 1)
        return _from_local_file(name, Path(weights).expanduser())
    if "/" not in rest:
        raise EncoderUnavailable(
            f"encoder spec 'open_clip:{rest}' names no weights (random weights are never used); "
            f"add a pretrained tag ({_tags_hint(rest)}) or {_WHAT_TO_PASS}")
    name, tag = rest.split("/", 1)
    _check_model_name(name)
    tag_cfg = open_clip.get_pretrained_cfg(name, tag)
    if not tag_cfg:
        raise EncoderUnavailable(
            f"open_clip has no pretrained tag {tag!r} for {name!r} ({_tags_hint(name)}); {_WHAT_TO_PASS}")
    if _offline() and not _tag_is_cached(tag_cfg):
        raise EncoderUnavailable(
            f"weights for open_clip:{name}/{tag} are not on this machine and HF_HUB_OFFLINE=1 forbids "
            f"downloading them; {_WHAT_TO_PASS}")
    try:
        model = open_clip.create_model(name, pretrained=tag, require_pretrained=True,
                                       force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)))
    except Exception as e:  # download failures come back as RuntimeError with the hub's text
        raise EncoderUnavailable(f"could not load open_clip:{name}/{tag} ({e}); {_WHAT_TO_PASS}") from e
    return _wrap(model, name, spec=f"{SPEC_PREFIX}{name}/{tag}", identity=f"open_clip:{name}/{tag}")


def _from_local_file(name: str, path: Path) -> OpenClipEncoder:
    import open_clip

    _check_model_name(name)
    if not path.is_file():
        raise EncoderUnavailable(f"weights file {str(path)!r} for open_clip:{name} does not exist; {_WHAT_TO_PASS}")
    try:
        # load_checkpoint reads tensors only (safetensors, or torch.load with weights_only=True)
        model = open_clip.create_model(name, pretrained=str(path), require_pretrained=True)
    except Exception as e:
        raise EncoderUnavailable(
            f"could not load {str(path)!r} as open_clip {name!r} weights ({e}); check that the file "
            f"holds a state dict for that architecture") from e
    return _wrap(model, name, spec=f"{SPEC_PREFIX}{name}@{path.resolve()}", identity=f"open_clip:{name}")


def _wrap(model, name: str, spec: str, identity: str) -> OpenClipEncoder:
    import open_clip

    pp = open_clip.get_model_preprocess_cfg(model)
    size = pp.get("size", model.visual.image_size)
    size = size[0] if isinstance(size, (tuple, list)) else size
    tokenizer = open_clip.get_tokenizer(name)
    return OpenClipEncoder(model, tokenizer, spec=spec, identity=identity, image_size=size,
                           mean=pp.get("mean", open_clip.OPENAI_DATASET_MEAN),
                           std=pp.get("std", open_clip.OPENAI_DATASET_STD))


def _check_model_name(name: str) -> None:
    import open_clip

    if name not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if name.lower()[:5] in m.lower()][:8]
        raise EncoderUnavailable(
            f"open_clip has no model named {name!r}" + (f" (similar: {', '.join(close)})" if close else "")
            + "; see open_clip.list_models()")


def _tags_hint(name: str) -> str:
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(name)
    return f"known tags: {', '.join(tags)}" if tags else "open_clip knows no tags for it"


def _tag_is_cached(tag_cfg: dict) -> bool:
    """Whether open_clip would find the tag's weights without a network (HF cache or URL cache)."""
    if tag_cfg.get("file"):
        return Path(tag_cfg["file"]).is_file()
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)
        filename = filename or "open_clip_pytorch_model.bin"
        # open_clip looks for safetensors twins of a .bin first
        names = [filename, filename.replace(".bin", ".safetensors"), "open_clip_model.safetensors"]
        return any(isinstance(try_to_load_from_cache(repo, n), str) for n in names)
    url = tag_cfg.get("url", "")
    return bool(url) and (Path("~/.cache/clip").expanduser() / os.path.basename(url)).is_file()
