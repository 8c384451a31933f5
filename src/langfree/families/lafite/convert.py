"""Import official LAFITE (stylegan2-ada-pytorch) network pickles as langfree snapshots.

The official ``network-snapshot-*.pkl`` holds G, G_ema, D as "persistent" objects whose pickle
embeds Python source that normal unpickling imports and runs. We never do that: a restricted
unpickler rebuilds only tensors and plain containers, and turns every persistent object into an
inert ``PersistentStub`` that records its class name and state (parameters, buffers, submodules,
init kwargs). Any other global in the pickle — ``os.system``, ``builtins.eval``, ... — is refused.

Parameter names map one to one (official -> langfree):
  mapping.fc{i}                       -> mapping.layers.{i}
  synthesis.b{r}.{conv0,conv1,torgb}  -> synthesis.blocks.b{r}.{...}
      pre_0 / pre_1 / affine_0        -> style.text_mlp.0 / style.text_mlp.1 / style.affine
      affine, scale_layer_k, bias_layer_k -> style.affine, style.scale_mlp.k, style.bias_mlp.k
  b{r}.{fromrgb,conv0,conv1,skip}     -> blocks.b{r}.{...}
  b4.{conv,fc,out,fts}                -> epilogue.{conv,fc,out,features}
The FIR filter buffers (``resample_filter``) are constants here and are dropped.
"""

from __future__ import annotations

import io
import pickle
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

# --------------------------------------------------------------------------- restricted unpickling


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle references something other than tensors, containers and persistent stubs."""


class PersistentStub:
    """What an official persistent object becomes: data only, its source code is ignored."""

    def __init__(self, meta: dict):
        if not isinstance(meta, dict) or not isinstance(meta.get("state"), dict):
            raise UnsafePickleError("persistent object without a state dict; not a LAFITE pickle")
        self.class_name = str(meta.get("class_name", "?"))
        self.state: dict = meta["state"]

    @property
    def init_kwargs(self) -> dict:
        kw = self.state.get("_init_kwargs") or {}
        return dict(kw) if isinstance(kw, dict) else {}

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Flat ``name -> tensor`` of parameters, buffers and submodules (like ``state_dict``)."""
        out: dict[str, torch.Tensor] = {}
        for group in ("_parameters", "_buffers"):
            for name, t in (self.state.get(group) or {}).items():
                if isinstance(t, torch.Tensor):
                    out[prefix + name] = t.detach()
        for name, sub in (self.state.get("_modules") or {}).items():
            if isinstance(sub, PersistentStub):
                out.update(sub.tensors(f"{prefix}{name}."))
        return out

    def find(self, path: str) -> PersistentStub | None:
        node: Any = self
        for part in path.split("."):
            node = (node.state.get("_modules") or {}).get(part) if isinstance(node, PersistentStub) else None
        return node

    def __repr__(self) -> str:
        return f"PersistentStub({self.class_name})"


class _PlainDict(dict):
    """Stands in for dnnlib.EasyDict (a dict subclass pickled by class): a dict, nothing more."""


def _load_storage_bytes(data: bytes):
    # Tensors pickled with plain ``pickle`` carry their storage as a nested torch.save blob;
    # torch's own weights-only unpickler reads it without running code.
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafePickleError("tensor storage is not a byte string")
    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


def _rebuild_parameter(data, requires_grad, backward_hooks, *extra):
    return data.detach()  # plain tensor: we only want the values


def _numpy_global(name: str):
    import numpy as np

    return {"dtype": np.dtype, "scalar": _numpy_scalar, "_reconstruct": _numpy_reconstruct,
            "ndarray": np.ndarray, "_frombuffer": _numpy_frombuffer}.get(name)


def _numpy_scalar(dtype, data=None):
    import numpy as np

    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafePickleError("numpy scalar with an object dtype")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _numpy_reconstruct(cls, shape, dtype_char):
    import numpy as np

    if cls is not np.ndarray:
        raise UnsafePickleError(f"numpy array of class {cls!r}")
    return np.ndarray.__new__(np.ndarray, shape, dtype_char)


def _numpy_frombuffer(buf, dtype, shape, order):
    import numpy as np

    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafePickleError("numpy array with an object dtype")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)


_ALLOWED = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_bytes,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("dnnlib.util", "EasyDict"): _PlainDict,
    ("dnnlib", "EasyDict"): _PlainDict,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): PersistentStub,
}
_TORCH_DTYPES = {name for name in dir(torch) if isinstance(getattr(torch, name, None), torch.dtype)}


class RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds tensors, plain containers and inert persistent stubs; refuses everything else."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _TORCH_DTYPES:
            return getattr(torch, name)
        if module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray"):
            fn = _numpy_global(name)
            if fn is not None:
                return fn
        raise UnsafePickleError(
            f"refusing to load {module}.{name} from the pickle: only tensors, containers and "
            "network state are allowed (this file may try to run code; do not open it with "
            "plain pickle)")

    def persistent_load(self, pid):
        raise UnsafePickleError("pickle uses persistent ids (a torch.save file?); expected an "
                                "official LAFITE network-snapshot .pkl")


def load_official_pickle(path: str | Path) -> dict[str, Any]:
    """Read an official snapshot pickle without running its code: {'G': stub, 'G_ema': stub, 'D': stub, ...}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; pass an official network-snapshot-*.pkl")
    with open(path, "rb") as f:
        try:
            data = RestrictedUnpickler(f).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, TypeError, AttributeError, ValueError,
                KeyError, IndexError, OverflowError) as e:  # a text file fails as a ValueError
            raise ValueError(f"{path}: not a readable LAFITE network pickle (reading it failed: "
                             f"{type(e).__name__}); pass an official network-snapshot-*.pkl of drboog/Lafite"
                             ) from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a dict with G, G_ema, D, got {type(data).__name__}")  # noqa: TRY004
    return data


# --------------------------------------------------------------------------- name mapping

_G_RULES = [
    (r"mapping\.fc(\d+)\.(weight|bias)", r"mapping.layers.\1.\2"),
    (r"mapping\.w_avg", r"mapping.w_avg"),
    (r"synthesis\.b(\d+)\.const", r"synthesis.blocks.b\1.const"),
    (r"synthesis\.b(\d+)\.(conv0|conv1|torgb)\.(weight|bias|noise_strength|noise_const)",
     r"synthesis.blocks.b\1.\2.\3"),
    (r"synthesis\.b(\d+)\.(conv0|conv1|torgb)\.pre_([01])\.(weight|bias)",
     r"synthesis.blocks.b\1.\2.style.text_mlp.\3.\4"),
    (r"synthesis\.b(\d+)\.(conv0|conv1|torgb)\.(?:affine_0|affine)\.(weight|bias)",
     r"synthesis.blocks.b\1.\2.style.affine.\3"),
    (r"synthesis\.b(\d+)\.(conv0|conv1|torgb)\.(scale|bias)_layer_([012])\.(weight|bias)",
     r"synthesis.blocks.b\1.\2.style.\3_mlp.\4.\5"),
]
_D_RULES = [
    (r"b(\d+)\.(fromrgb|conv0|conv1|skip)\.(weight|bias)", r"blocks.b\1.\2.\3"),
    (r"b4\.(conv|fc|out)\.(weight|bias)", r"epilogue.\1.\2"),
    (r"b4\.fts\.(weight|bias)", r"epilogue.features.\1"),
]
_DROPPED = re.compile(r"(.*\.)?resample_filter")


def _rename(tensors: dict[str, torch.Tensor], rules, what: str) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in tensors.items():
        if _DROPPED.fullmatch(name):
            continue
        for pattern, repl in rules:
            if re.fullmatch(pattern, name):
                out[re.sub(pattern, repl, name)] = t.float().contiguous()
                break
        else:
            raise ValueError(f"official {what} tensor {name!r} has no langfree counterpart: this "
                             "is not a default LAFITE architecture (label conditioning, "
                             "structure 0/3 styles or 'orig'/'skip' D are not supported)")
    return out


def _check_supported(G: dict[str, torch.Tensor], D: dict[str, torch.Tensor]) -> None:
    if any(k.startswith("mapping.embed.") for k in G):
        raise ValueError("official G has a label embedding (c_dim > 0); langfree LAFITE conditions "
                         "on CLIP features only")
    both = [k for k in G if k.endswith(".pre_0.weight") and k.replace("pre_0", "affine") in G]
    if both:
        raise ValueError(f"official G uses the 'structure 0' style form ({both[0]}), which LAFITE's "
                         "train.py never builds; not supported")
    if "b4.fromrgb.weight" in D:
        raise ValueError("official D uses the 'skip' architecture; only 'resnet' is supported")


def convert_state(G: dict[str, torch.Tensor], D: dict[str, torch.Tensor],
                  G_ema: dict[str, torch.Tensor] | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Official flat tensors (as ``state_dict()``) -> langfree state dicts {'G', 'G_ema', 'D'}."""
    _check_supported(G, D)
    out = {"G": _rename(G, _G_RULES, "G"), "D": _rename(D, _D_RULES, "D")}
    out["G_ema"] = _rename(G_ema, _G_RULES, "G_ema") if G_ema is not None else dict(out["G"])
    return out


# --------------------------------------------------------------------------- architecture inference


def infer_architecture(G: dict[str, torch.Tensor], D: dict[str, torch.Tensor],
                       hints: dict[str, Any] | None = None) -> dict[str, Any]:
    """Network config from official tensor shapes (+ ``hints`` such as conv_clamp, change).

    Returns keys of LafiteConfig: resolution, z_dim, w_dim, c_dim, channel_base, channel_max,
    mapping_layers, change_resolution, mbstd_group_size, conv_clamp.
    """
    hints = hints or {}
    fc = sorted(int(m.group(1)) for k in G if (m := re.fullmatch(r"mapping\.fc(\d+)\.weight", k)))
    if not fc:
        raise ValueError("official G has no mapping.fc* weights; not a LAFITE generator")
    res = sorted(int(m.group(1)) for k in G if (m := re.fullmatch(r"synthesis\.b(\d+)\.conv1\.weight", k)))
    channels = {r: G[f"synthesis.b{r}.conv1.weight"].shape[0] for r in res}
    concat = [r for r in res if f"synthesis.b{r}.conv1.pre_0.weight" in G]
    first = f"synthesis.b{res[0]}.conv1"
    text0 = G.get(f"{first}.pre_0.weight", G.get(f"{first}.scale_layer_0.weight"))
    mlp_dim = G.get(f"{first}.pre_1.weight", G.get(f"{first}.scale_layer_1.weight")).shape[0]
    w_dim = G["mapping.fc0.weight"].shape[0]
    if mlp_dim != w_dim:
        raise ValueError(f"official G has {mlp_dim}-wide text MLPs but w_dim={w_dim}; langfree "
                         "LAFITE ties them (the official train.py always uses 512 for both)")
    channel_max = max(channels.values())
    channel_base = _infer_channel_base(channels, channel_max)
    arch = {
        "resolution": res[-1], "z_dim": G["mapping.fc0.weight"].shape[1], "w_dim": w_dim,
        "c_dim": text0.shape[1], "channel_base": channel_base, "channel_max": channel_max,
        "mapping_layers": len(fc),
        "change_resolution": int(hints.get("change") or (max(concat) if concat else 2)),
        "mbstd_group_size": int(hints.get("mbstd_group_size") or 4),
        "conv_clamp": _int_or_none(hints.get("conv_clamp")),
    }
    d_fdim = D["b4.fts.weight"].shape[0] if "b4.fts.weight" in D else None
    if d_fdim != arch["c_dim"]:
        raise ValueError(f"official D's feature head has {d_fdim} outputs but G's condition is "
                         f"{arch['c_dim']}-d; these networks do not belong together")
    return arch


def _int_or_none(value):
    return None if value is None else int(value) if float(value).is_integer() else float(value)


def _infer_channel_base(channels: dict[int, int], channel_max: int) -> int:
    below = [(r, c) for r, c in channels.items() if c < channel_max]
    base = below[0][0] * below[0][1] if below else channel_max * max(channels)
    if any(min(base // r, channel_max) != c for r, c in channels.items()):
        raise ValueError(f"cannot express the official channel counts {channels} as "
                         "min(channel_base // r, channel_max)")
    return base


def _hints(data: dict[str, Any]) -> dict[str, Any]:
    """conv_clamp, change and the mbstd group from the pickled init kwargs / layer state."""
    hints: dict[str, Any] = {}
    G, D = data.get("G_ema") or data.get("G"), data.get("D")
    if isinstance(G, PersistentStub):
        syn = (G.init_kwargs.get("synthesis_kwargs") or {})
        if "change" in syn:
            hints["change"] = syn["change"]
        layer = G.find("synthesis.b4.conv1")
        if layer is not None:
            clamp = layer.state.get("conv_clamp")
            hints["conv_clamp"] = None if clamp is None else float(clamp)
    if isinstance(D, PersistentStub):
        mbstd = D.find("b4.mbstd")
        if mbstd is not None and mbstd.state.get("group_size") is not None:
            hints["mbstd_group_size"] = int(mbstd.state["group_size"])
        if D.state.get("use_norm"):
            raise ValueError("official D normalises its semantic features (--d_use_norm True); "
                             "langfree's D does not, so its logits would differ")
    return hints


def read_official(path: str | Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """(langfree state dicts {'G','G_ema','D'}, inferred architecture) from an official pickle."""
    data = load_official_pickle(path)
    stubs = {}
    for key in ("G", "G_ema", "D"):
        if isinstance(data.get(key), PersistentStub):
            stubs[key] = data[key].tensors()
    if "D" not in stubs or not ({"G", "G_ema"} & set(stubs)):
        raise ValueError(f"{path}: expected networks 'G'/'G_ema' and 'D', found "
                         f"{sorted(k for k, v in data.items() if isinstance(v, PersistentStub))}")
    G = stubs.get("G", stubs.get("G_ema"))
    states = convert_state(G, stubs["D"], stubs.get("G_ema"))
    return states, infer_architecture(G, stubs["D"], _hints(data))


def official_config(arch: dict[str, Any], base=None, overrides: list[str] | tuple = ()):
    """LafiteConfig = ``base`` (training settings; default LafiteConfig()) + the pickle's
    architecture + the official D's batch-sum projection, then ``--set`` style ``overrides``."""
    import dataclasses

    from langfree.config import apply_overrides, to_dict
    from langfree.families.lafite.config import LafiteConfig

    merged = dataclasses.replace(base or LafiteConfig(), **arch, d_projection="batch_sum")
    return apply_overrides(LafiteConfig, to_dict(merged), list(overrides))


def write_snapshot(states: dict[str, dict[str, torch.Tensor]], config, dest: str | Path,
                   source: str = "") -> Path:
    """Load converted ``states`` into a LafiteFamily built from ``config``; save it at ``dest``."""
    from langfree.checkpoint import save_snapshot
    from langfree.families.lafite.family import LafiteFamily

    family = LafiteFamily(config, None)
    mods = family.modules()
    for name, state in states.items():
        missing, unexpected = mods[name].load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{name} does not match the config: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]} (did a --set change the architecture?)")
    extra = {"converted_from": source, "source_format": "drboog/Lafite network pickle"}
    # G and D stay beside G_ema so `langfree train lafite --init-from SNAPSHOT` can fine-tune it.
    return save_snapshot(dest, family, kimg=0.0, extra=extra,
                         modules=tuple(n for n in ("G", "G_ema", "D") if n in states))


def convert_pickle(src: str | Path, dest: str | Path, base=None,
                   overrides: list[str] | tuple = ()) -> Path:
    """Official pickle -> langfree snapshot at ``dest`` (G, G_ema, D; kimg 0). See
    ``official_config`` for ``base`` and ``overrides``."""
    states, arch = read_official(src)
    return write_snapshot(states, official_config(arch, base, overrides), dest, Path(src).name)
