"""``langfree convert taming-ckpt IN.ckpt OUT``: an official taming-transformers VQGAN checkpoint
(a PyTorch Lightning file) -> langfree tensors, without executing any code from the file.

A Lightning ``.ckpt`` is a torch zip: ``<name>/data.pkl`` (a pickle) + ``<name>/data/<key>``
(raw storages). Unrestricted unpickling would run whatever the pickle names, and torch's
tensor-only loader (``weights_only=True``) refuses these files because they also hold callbacks and an OmegaConf
config. So the pickle is read by ``_TensorOnlyUnpickler``: it resolves exactly the torch
functions that rebuild tensors and storages (plus OrderedDict); every other global becomes an
inert ``_Opaque`` placeholder whose construction runs nothing. Then ``state_dict`` minus the
training-only ``loss.*`` (LPIPS + discriminator) is checked against ``VQGAN``'s names, and the
geometry (ch, ch_mult, ...) is read off the tensor shapes.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from langfree.families.vqgan.config import VQGANConfig


class ConvertError(ValueError):
    """The input is not a taming VQGAN checkpoint; the message says what was found."""


class _Opaque:
    """Stands in for any non-tensor object of the pickle (callbacks, configs, ...)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Opaque:
        return _Opaque()


class _Storage:
    """Raw bytes of one storage of the file and the dtype its tensors view them as."""

    def __init__(self, untyped: torch.UntypedStorage, dtype: torch.dtype) -> None:
        self.untyped, self.dtype = untyped, dtype


def _rebuild_tensor(storage: _Storage, offset, size, stride, *rest) -> torch.Tensor:
    # rest: requires_grad, backward_hooks[, metadata]: irrelevant for weights
    if not isinstance(storage, _Storage):
        raise ConvertError("a tensor in the file does not point at a stored storage")
    t = torch.empty(0, dtype=storage.dtype)
    return t.set_(storage.untyped, offset, torch.Size(size), stride)


def _rebuild_parameter(data, *rest) -> torch.Tensor:
    return data


class _StorageType:
    """What ``torch.FloatStorage`` etc. resolve to inside the pickle: just a dtype."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


_STORAGE_TYPES = {name: _StorageType(dtype) for name, dtype in (
    ("FloatStorage", torch.float32), ("DoubleStorage", torch.float64),
    ("HalfStorage", torch.float16), ("BFloat16Storage", torch.bfloat16),
    ("LongStorage", torch.int64), ("IntStorage", torch.int32), ("ShortStorage", torch.int16),
    ("CharStorage", torch.int8), ("ByteStorage", torch.uint8), ("BoolStorage", torch.bool))}
_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch", "Size"): torch.Size,
    **{("torch", n): t for n, t in _STORAGE_TYPES.items()},
}


class _TensorOnlyUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, zf: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self.zf, self.prefix = zf, prefix
        self.storages: dict[str, Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        return _ALLOWED.get((module, name), _Opaque)

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise ConvertError(f"unexpected persistent id {pid!r:.80}")
        _, storage_type, key, _location, _numel = pid
        if not isinstance(storage_type, _StorageType):
            raise ConvertError(f"unsupported storage type {storage_type!r}")
        if key not in self.storages:
            raw = bytearray(self.zf.read(f"{self.prefix}data/{key}"))
            untyped = torch.UntypedStorage.from_buffer(raw, dtype=torch.uint8) if raw else \
                torch.UntypedStorage(0)
            self.storages[key] = _Storage(untyped, storage_type.dtype)
        return self.storages[key]


def read_tensors_only(path: str | Path) -> Any:
    """Unpickle a torch zip file, rebuilding tensors only (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"{path} not found")
    if not zipfile.is_zipfile(path):
        raise ConvertError(f"{path} is not a torch zip checkpoint (legacy pre-1.6 torch files "
                           "are not supported: re-save it with a current torch)")
    with zipfile.ZipFile(path) as zf:
        pkls = [n for n in zf.namelist() if n.endswith("data.pkl")]
        if len(pkls) != 1:
            raise ConvertError(f"{path}: expected one data.pkl in the zip, found {pkls}")
        prefix = pkls[0][: -len("data.pkl")]
        return _TensorOnlyUnpickler(zf.read(pkls[0]), zf, prefix).load()


def infer_config(sd: dict[str, torch.Tensor], resolution: int = 256, **overrides: Any
                 ) -> VQGANConfig:
    """The VQGAN geometry from the tensor shapes (taming names). ``resolution`` sets only
    which attention resolutions the attention levels mean (the convs do not depend on it)."""
    try:
        ch = sd["encoder.conv_in.weight"].shape[0]
        levels = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.down."))
        ch_mult = tuple(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch
                        for i in range(levels))
        blocks = 1 + max(int(k.split(".")[4]) for k in sd if k.startswith("encoder.down.0.block."))
        attn = tuple(resolution // 2 ** i for i in range(levels)
                     if f"encoder.down.{i}.attn.0.q.weight" in sd)
        z_channels = sd["quant_conv.weight"].shape[1]
        n_embed, embed_dim = sd["quantize.embedding.weight"].shape
    except (KeyError, ValueError) as e:
        raise ConvertError(f"not a taming VQGAN state_dict (missing {e})") from e
    if sd["encoder.conv_out.weight"].shape[0] != z_channels:
        raise ConvertError("encoder.conv_out has 2·z_channels outputs (double_z): a KL "
                           "autoencoder, not a VQGAN")
    return VQGANConfig(resolution=resolution, ch=ch, ch_mult=ch_mult, num_res_blocks=blocks,
                       attn_resolutions=attn, z_channels=z_channels, embed_dim=embed_dim,
                       n_embed=n_embed, **overrides)


def taming_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The VQGAN tensors of a taming ``.ckpt`` (``state_dict`` minus ``loss.*``), fp32."""
    obj = read_tensors_only(path)
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict):
        raise ConvertError(f"{path}: no state_dict in the checkpoint")
    return {k: v.float().contiguous() for k, v in sd.items()
            if isinstance(v, torch.Tensor) and not k.startswith("loss.")}


def convert_taming_ckpt(src: str | Path, out: str | Path, resolution: int = 256) -> Path:
    """Write a ``vqgan`` family snapshot at ``out`` (``vqgan.safetensors``, config.json with
    ``legacy_beta`` on — the checkpoint was trained with taming's loss —, manifest.json) and
    return ``out``. Names are checked both ways against ``VQGAN`` and the weights loaded
    strictly before anything is written. ``--vqgan OUT`` then works like a trained run."""
    from langfree.checkpoint import save_snapshot
    from langfree.families.vqgan.family import VQGANFamily

    sd = taming_state_dict(src)
    family = VQGANFamily(infer_config(sd, resolution, legacy_beta=True))
    ours = set(family.vqgan.state_dict())
    extra, missing = sorted(set(sd) - ours), sorted(ours - set(sd))
    if extra or missing:
        raise ConvertError(f"{src}: names differ from langfree's VQGAN: unexpected {extra[:5]}, "
                           f"missing {missing[:5]}")
    family.vqgan.load_state_dict(sd, strict=True)
    # every code counts as live: the checkpoint carries no usage statistics
    return save_snapshot(out, family, kimg=0.0, extra={"converted_from": str(src)})
