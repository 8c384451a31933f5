"""Official Anima-Lab/MaskDiT checkpoints -> langfree tensors (no code executed).

An official checkpoint is a ``torch.save`` dict with ``model`` / ``ema`` state dicts of
``EDMPrecond`` (keys ``model.<DiT key>``). It is read with ``torch.load(weights_only=True)``,
which refuses anything but tensors and plain containers. The networks share the official
module names, so conversion renames one key and drops the fixed position tables (recomputed
here; checked equal when ``check_positions``).
"""

from __future__ import annotations

from pathlib import Path

import torch

RENAMES = {"model.y_embedder.embedding_table.weight": "model.cond_embedder.weight"}
POSITIONS = ("model.pos_embed", "model.decoder_pos_embed")


def official_to_langfree(state: dict[str, torch.Tensor], denoiser=None) -> dict[str, torch.Tensor]:
    """An official ``EDMPrecond`` state dict -> an ``EDMDenoiser`` state dict. With
    ``denoiser``, the dropped position tables are checked against the recomputed ones."""
    state = {k if k.startswith("model.") else f"model.{k}": v for k, v in state.items()}
    out = {RENAMES.get(k, k): v for k, v in state.items() if k not in POSITIONS}
    if denoiser is not None:
        model = denoiser.model
        ours = {"model.pos_embed": model.pos_embed}
        if model.decoder_depth > 0:
            ours["model.decoder_pos_embed"] = model.decoder_pos_embed
        for key, table in ours.items():
            if key in state and not torch.allclose(state[key].float(), table.float(), atol=1e-5):
                raise ValueError(f"{key} of the checkpoint differs from the fixed sin-cos table; "
                                 "the checkpoint is for another input size or width")
    return out


def load_checkpoint(path: str | Path) -> dict:
    """``torch.load(weights_only=True)``: tensors and plain containers; anything else (a pickled
    object, which loading would run code to build) is refused with a ValueError."""
    import pickle

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).splitlines()[0][:200]
        raise ValueError(f"{path} holds objects other than tensors and plain containers, which "
                         f"langfree does not unpickle (weights_only=True: {reason}); pass an "
                         "official MaskDiT checkpoint (model / ema state dicts)") from None


def read_official(path: str | Path, which: str = "ema") -> dict[str, torch.Tensor]:
    """The ``which`` ('ema' or 'model') state dict of an official checkpoint file."""
    ckpt = load_checkpoint(path)
    if which not in ckpt:
        raise ValueError(f"{path} has no {which!r} entry (it has {sorted(ckpt)}); pass "
                         "an official MaskDiT checkpoint (keys model / ema)")
    return ckpt[which]


def import_official(path: str | Path, out: str | Path, config, kimg: float = 0.0) -> Path:
    """``langfree convert maskdit-pt IN.pt OUT``: an official checkpoint -> a langfree snapshot
    of ``config`` (a MaskDiTConfig whose shapes match the checkpoint, e.g. MaskDiT-XL/2 with
    cond_dim 1000 for the ImageNet ones: their one-hot labels are unit vectors, so our L2
    normalisation leaves them unchanged, and the zero null label is the same). Both ``model``
    and ``ema`` are kept (``net`` / ``net_ema``) so ``--init-from`` can continue training.
    When ``config.vae`` is set, that latent space is recorded as the snapshot's reference (by
    spec and digest), so the snapshot samples."""
    from langfree.checkpoint import save_snapshot
    from langfree.families.maskdit.family import MaskDiTFamily

    family = MaskDiTFamily(config)
    if config.vae:
        family.load_vae(config.vae)
    ckpt = load_checkpoint(path)
    for which, module in (("model", family.net), ("ema", family.net_ema)):
        if which not in ckpt:
            raise ValueError(f"{path} has no {which!r} entry (it has {sorted(ckpt)}); pass an "
                             "official MaskDiT checkpoint (keys model / ema)")
        try:
            module.load_state_dict(official_to_langfree(ckpt[which], module))
        except RuntimeError as exc:
            raise ValueError(f"{path}: {which} does not fit the config "
                             f"({str(exc).splitlines()[0]}); pass the size it was trained at "
                             "(e.g. MaskDiTConfig.from_size('MaskDiT-XL/2', cond_dim=1000))") from None
    return save_snapshot(out, family, kimg, extra={"imported_from": str(path)},
                         modules=("net", "net_ema"))
