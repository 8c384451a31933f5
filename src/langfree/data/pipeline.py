"""The training dataset, assembled from what a family declares in ``Family.needs``.

    image                  the archive's pixels
    image_emb, text_emb,   the encoder's embeddings (features sidecar, data/features.py);
    has_caption            text_emb is one caption's embedding per epoch (zeros where none)
    captions               ``caption``: the text of that same caption ("" where none)
    latents, image_codes,  the family's ``Producer`` sidecars (data/sidecar.py), one row per image
    text_ids               (token ids that change per step, e.g. BPE dropout, come from ``caption``)

A need that cannot be met stops training at the start, naming the missing input and the command
that makes it. Items follow the loop's key contract: ``key % N`` is the image, ``key // N`` the
epoch, so every batch is a pure function of (seed, position).
"""

from __future__ import annotations

from typing import Any

import torch

from langfree.data import sidecar
from langfree.data.features import caption_choice, load_features
from langfree.families.base import NEEDS, optional

EMBEDDING_NEEDS = frozenset({"image_emb", "text_emb"})  # has_caption comes from the archive
SIDECAR_NEEDS = frozenset({"latents", "image_codes", "text_ids"})


class NeedError(ValueError):
    """A family needs an input the data or the options cannot give; the message says which."""


def check_needs(family: Any, archive: Any, encoder: Any) -> None:
    """Fail now, before any model is trained, when a need cannot be met."""
    needs = frozenset(family.needs)
    unknown = sorted(needs - NEEDS)
    if unknown:
        raise NeedError(f"family {family.name} declares unknown needs {unknown}; known: "
                        f"{', '.join(sorted(NEEDS))}")
    if needs & EMBEDDING_NEEDS and encoder is None:
        raise NeedError(f"family {family.name} trains on encoder embeddings "
                        f"({', '.join(sorted(needs & EMBEDDING_NEEDS))}) but no encoder was given: "
                        "pass --encoder SPEC (open_clip:ViT-B-32@/path/weights, or a directory "
                        "from `langfree encoder train CAPTIONED.zip --outdir DIR`)")
    captioned = sum(1 for i in range(len(archive)) if archive.captions(i))
    if ("captions" in needs or getattr(family, "needs_captions", False)) and captioned == 0:
        raise NeedError(f"family {family.name} trains on captions, but {archive.path} has none "
                        f"(0 of {len(archive)} images): build the archive from images with X.txt "
                        "captions beside X.png (`langfree dataset SRC DEST.zip`)")
    producers = optional(family, "producers", default={}) or {}
    for need in sorted(needs & SIDECAR_NEEDS):
        if need not in producers:
            hint = optional(family, "need_hint", need, default=None) or "see the family's --help"
            raise NeedError(f"family {family.name} needs {need} but has no producer for them: "
                            f"{hint}")


class TrainingDataset(torch.utils.data.Dataset):
    """``ds[key]`` -> the dict of fields the family needs for image ``key % N``."""

    def __init__(self, archive: Any, needs: frozenset[str], features: Any = None,
                 sidecars: dict[str, torch.Tensor] | None = None, seed: int = 0) -> None:
        self.archive, self.needs, self.features = archive, frozenset(needs), features
        self.sidecars, self.seed = sidecars or {}, int(seed)
        for name, tensor in self.sidecars.items():
            if len(tensor) != len(archive):
                raise NeedError(f"sidecar field {name} has {len(tensor)} rows for {len(archive)} "
                                f"images of {archive.path}; delete the stale sidecar file")
        if features is not None and len(features) != len(archive):
            raise NeedError(f"features {features.path} hold {len(features)} images but archive "
                            f"{archive.path} has {len(archive)}; recompute with 'langfree encode'")
        dim = features.embed_dim if features is not None else 0
        self._zeros = torch.zeros(dim, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.archive)

    def __getitem__(self, key: int) -> dict:
        n = len(self.archive)
        index, epoch = int(key) % n, int(key) // n
        item: dict[str, Any] = {"index": index}
        if "image" in self.needs:
            item["image"] = self.archive[index]["image"]
        needs = self.needs
        wants_caption = needs & {"captions", "text_emb", "has_caption"}
        captions = self.archive.captions(index) if wants_caption else []
        choice = caption_choice(self.seed, epoch, index, len(captions)) if captions else None
        if "image_emb" in needs:
            item["image_emb"] = self.features.image_emb[index]
        if "text_emb" in needs:
            first = int(self.features.caption_offsets[index])
            item["text_emb"] = (self.features.caption_emb[first + choice] if choice is not None
                                else self._zeros)
        if "has_caption" in needs:
            item["has_caption"] = choice is not None
        if "captions" in needs:
            item["caption"] = captions[choice] if choice is not None else ""
        for name, tensor in self.sidecars.items():
            item[name] = tensor[index]
        return item


def build_dataset(family: Any, archive: Any, encoder: Any = None, seed: int = 0,
                  progress: bool | None = None) -> TrainingDataset:
    """The dataset ``family`` trains on, with every precomputed input made (or reused)."""
    check_needs(family, archive, encoder)
    needs = frozenset(family.needs)
    features = load_features(archive.path, encoder, progress=progress) if needs & EMBEDDING_NEEDS else None
    sidecars: dict[str, torch.Tensor] = {}
    producers = optional(family, "producers", default={}) or {}
    for need in sorted(needs & SIDECAR_NEEDS):
        sidecars.update(sidecar.produce(archive, producers[need], progress=progress))
    return TrainingDataset(archive, needs, features, sidecars, seed)
