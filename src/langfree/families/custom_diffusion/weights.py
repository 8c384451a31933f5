"""Custom Diffusion's files, in diffusers' format, written and read by langfree itself.

- ``pytorch_custom_diffusion_weights.safetensors``: ``{<processor name>.<param>: tensor}`` for
  every cross-attention processor, e.g.
  ``down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_custom_diffusion.weight``
  (the keys of diffusers' ``save_attn_procs``; its ``.bin`` adds empty entries for the
  self-attention processors, which are skipped on reading).
- ``<new1>.safetensors``: ``{"<new1>": tensor [D]}``, one file per modifier token (the format
  ``load_textual_inversion`` reads).

Why not diffusers' loaders: in diffusers 0.42.1 ``unet.load_attn_procs`` installs nothing unless
the private ``_pipeline=`` is passed, and then refuses a file without an entry for every
attention layer (REFERENCE §5). ``load_custom_diffusion`` here needs neither. Official ``.bin``
files are read tensor-only (``torch.load(weights_only=True)``); langfree writes no pickles.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from langfree.families.custom_diffusion.attention import (
    CustomDiffusionAttnProcessor,
    CustomDiffusionLayers,
    installed,
)

WEIGHTS_NAME = "pytorch_custom_diffusion_weights.safetensors"
WEIGHTS_NAME_BIN = "pytorch_custom_diffusion_weights.bin"
PARAM_NAMES = ("to_k_custom_diffusion.weight", "to_v_custom_diffusion.weight",
               "to_q_custom_diffusion.weight", "to_out_custom_diffusion.0.weight",
               "to_out_custom_diffusion.0.bias")


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A .safetensors or official .bin file -> {key: tensor} (non-tensor entries dropped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    if path.suffix in (".bin", ".pt"):
        data = torch.load(path, map_location="cpu", weights_only=True)  # tensors only, no code
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a dict of tensors, found {type(data).__name__}")
        return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    raise ValueError(f"{path}: expected a .safetensors or .bin file")


def write_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, path,
              metadata={"format": "pt"})
    return path


def custom_diffusion_state_dict(unet_or_layers: nn.Module) -> dict[str, torch.Tensor]:
    """diffusers-keyed tensors of the Custom Diffusion processors on a UNet (or a Layers)."""
    if isinstance(unet_or_layers, CustomDiffusionLayers):
        return unet_or_layers.diffusers_state_dict()
    return {f"{name}.{k}": v for name, proc in installed(unet_or_layers).items()
            for k, v in proc.state_dict().items()}


def split_processor_keys(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{"a.attn2.processor.to_k_custom_diffusion.weight": t} -> {"a.attn2.processor": {...}}."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        sub = next((p for p in PARAM_NAMES if key.endswith("." + p)), None)
        if sub is None:
            raise ValueError(f"unexpected key {key!r} in Custom Diffusion weights (expected keys "
                             f"ending in one of {', '.join(PARAM_NAMES)})")
        groups.setdefault(key[: -len(sub) - 1], {})[sub] = value
    return groups


def load_custom_diffusion(unet: nn.Module, path: str | Path) -> dict[str, CustomDiffusionAttnProcessor]:
    """Install the processors stored in ``path`` (a weights file, or a directory holding one)
    on ``unet``, exactly (strict shapes and keys). Returns them by processor name."""
    path = Path(path)
    if path.is_dir():
        found = [path / n for n in (WEIGHTS_NAME, WEIGHTS_NAME_BIN) if (path / n).is_file()]
        if not found:
            raise FileNotFoundError(f"{path} holds no {WEIGHTS_NAME} (or {WEIGHTS_NAME_BIN})")
        path = found[0]
    groups = split_processor_keys(read_tensors(path))
    modules = dict(unet.named_modules())
    procs = {}
    for name, sub in groups.items():
        attn = modules.get(name.removesuffix(".processor"))
        if attn is None or not hasattr(attn, "set_processor"):
            raise ValueError(f"{path}: processor {name!r} is not an attention layer of this UNet; "
                             "the weights were trained on a different base pipeline")
        if "to_k_custom_diffusion.weight" not in sub:
            raise ValueError(f"{path}: {name} has no to_k_custom_diffusion.weight")
        hidden, cross = sub["to_k_custom_diffusion.weight"].shape
        proc = CustomDiffusionAttnProcessor(
            hidden, cross, train_kv=True, train_q_out="to_q_custom_diffusion.weight" in sub,
            out_bias="to_out_custom_diffusion.0.bias" in sub)
        try:
            proc.load_state_dict(sub, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{path}: {name} does not fit this UNet ({exc})") from None
        procs[name] = proc.to(attn.to_q.weight.device, attn.to_q.weight.dtype)
    for name, proc in procs.items():
        modules[name.removesuffix(".processor")].set_processor(proc)
    return procs


def token_file_name(token: str, safetensors: bool = True) -> str:
    return f"{token}.{'safetensors' if safetensors else 'bin'}"


def save_custom_diffusion(dirpath: str | Path, layers: nn.Module | None,
                          tokens: dict[str, torch.Tensor]) -> list[Path]:
    """Write the weights file (when there are processors) and one ``<token>.safetensors`` per
    modifier token ({token: [D]}). Returns the paths written."""
    dirpath = Path(dirpath)
    out = []
    state = custom_diffusion_state_dict(layers) if layers is not None else {}
    if state:
        out.append(write_tensors(dirpath / WEIGHTS_NAME, state))
    for token, row in tokens.items():
        if row.ndim != 1:
            raise ValueError(f"token {token}: expected a [D] embedding, got {tuple(row.shape)}")
        out.append(write_tensors(dirpath / token_file_name(token), {token: row}))
    return out


def read_token_file(path: str | Path) -> tuple[str, torch.Tensor]:
    """``<new1>.safetensors`` / official ``<new1>.bin`` -> ("<new1>", [D])."""
    tensors = read_tensors(path)
    if len(tensors) != 1:
        raise ValueError(f"{path}: expected one token embedding, found keys {sorted(tensors)}")
    ((token, row),) = tensors.items()
    row = row.reshape(-1) if row.ndim == 2 and row.shape[0] == 1 else row
    if row.ndim != 1:
        raise ValueError(f"{path}: embedding of {token} has shape {tuple(row.shape)}, expected [D]")
    return token, row.float()


def token_files(dirpath: str | Path) -> list[Path]:
    """The ``<...>.safetensors`` (else ``<...>.bin``) token files of a training output dir,
    ordered by token name."""
    dirpath = Path(dirpath)
    stems = sorted({p.stem for p in dirpath.glob("<*>.*") if p.suffix in (".safetensors", ".bin")})
    pick = lambda s: dirpath / (s + ".safetensors") if (dirpath / (s + ".safetensors")).is_file() \
        else dirpath / (s + ".bin")
    return [pick(s) for s in stems]


def load_token_embeddings(tokenizer, text_encoder: nn.Module, paths: list[str | Path]):
    """Add the tokens of ``paths`` to ``tokenizer`` with their stored rows; returns the
    installed ``ModifierEmbedding``."""
    from langfree.families.custom_diffusion.tokens import ModifierEmbedding, add_modifier_tokens

    pairs = [read_token_file(p) for p in paths]
    base = text_encoder.get_input_embeddings()
    if isinstance(base, ModifierEmbedding):
        raise ValueError("this text encoder already has modifier tokens; load into a fresh one")
    for token, row in pairs:
        if row.shape[0] != base.embedding_dim:
            raise ValueError(f"token {token}: embedding width {row.shape[0]}, the text encoder's "
                             f"is {base.embedding_dim}; trained on another base pipeline")
    add_modifier_tokens(tokenizer, [t for t, _ in pairs])
    module = ModifierEmbedding(base, torch.stack([r for _, r in pairs]))
    module.requires_grad_(False)
    text_encoder.set_input_embeddings(module)
    return module


def load_into(parts, dirpath: str | Path) -> None:
    """Restore a training output dir into SD components (``SDComponents`` or a pipeline): the
    processors onto the UNet (or, from a full fine-tune, the UNet itself) and the modifier
    tokens into tokenizer + text encoder."""
    dirpath = Path(dirpath)
    if (dirpath / "unet" / "config.json").is_file():  # freeze_model "unet": the whole UNet
        from diffusers import UNet2DConditionModel

        parts.unet = UNet2DConditionModel.from_pretrained(dirpath / "unet", local_files_only=True)
        parts.unet.float().eval().requires_grad_(False)
    if any((dirpath / n).is_file() for n in (WEIGHTS_NAME, WEIGHTS_NAME_BIN)):
        load_custom_diffusion(parts.unet, dirpath)
    files = token_files(dirpath)
    if files:
        load_token_embeddings(parts.tokenizer, parts.text_encoder, files)
