"""Precomputed CLIP-space embeddings of an archive's images and captions (a sidecar file).

Families train on embeddings, not on the encoder: image embeddings (language-free conditioning)
and caption embeddings (standard conditioning) are computed once per (archive, encoder) and
stored next to the archive::

    DATA.zip
    DATA.features-<fingerprint>.safetensors   image_emb [N, D], caption_emb [M, D] float32 (unit
                                              norm), caption_offsets [N+1] int64; metadata: spec,
                                              fingerprint, archive digest, format version

Captions of image i are rows ``caption_offsets[i]:caption_offsets[i+1]`` of ``caption_emb``.
The fingerprint hashes what the encoder computes (its weights and kind), not where its files live,
so moving an encoder directory keeps its sidecars valid. The archive digest (zip member names,
sizes and CRCs) makes a rebuilt archive invalidate its old sidecar.

Interrupting ``encode_archive`` loses at most one chunk: finished chunks are kept in
``<sidecar>.partial/`` and reused by the next run; the sidecar itself appears atomically at the end.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from langfree.data import sidecar
from langfree.data.sidecar import archive_digest  # noqa: F401 (re-exported)

CHUNK_IMAGES = sidecar.CHUNK_IMAGES


def encoder_fingerprint(encoder) -> str:
    """16 hex digits naming what an encoder computes: its identity (model kind, without file
    paths; the spec for foreign encoders) plus a hash of its weights."""
    identity = getattr(encoder, "identity", None) or encoder.spec
    weights = encoder.weights_hash() if hasattr(encoder, "weights_hash") else ""
    text = f"{identity}|{weights}|{encoder.embed_dim}|{encoder.image_size}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def sidecar_path(archive_path: str | os.PathLike, encoder) -> Path:
    return sidecar.sidecar_path(archive_path, "features", encoder_fingerprint(encoder))


@dataclass
class Features:
    """Embeddings of one archive under one encoder (all float32, L2-normalised rows)."""

    image_emb: torch.Tensor  # [N, D]
    caption_emb: torch.Tensor  # [M, D], captions of all images, concatenated in image order
    caption_offsets: torch.Tensor  # [N + 1] int64
    fingerprint: str
    spec: str
    path: Path

    def __len__(self) -> int:
        return self.image_emb.shape[0]

    @property
    def embed_dim(self) -> int:
        return self.image_emb.shape[1]

    def captions_of(self, i: int) -> torch.Tensor:
        """[k, D] embeddings of image i's captions (k may be 0)."""
        return self.caption_emb[self.caption_offsets[i]:self.caption_offsets[i + 1]]


def _resolve_encoder(encoder):
    if isinstance(encoder, str):
        from langfree.encoders import load_encoder

        return load_encoder(encoder)
    return encoder


@torch.no_grad()
def _encode_chunk(archive, encoder, start: int, stop: int, batch_size: int, bar) -> dict:
    image_emb, texts = [], []
    for s in range(start, stop, batch_size):
        idx = range(s, min(s + batch_size, stop))
        images = archive.images(idx).to(encoder.device).float() / 127.5 - 1  # [B, 3, H, W] in [-1, 1]
        image_emb.append(encoder.encode_image(images).cpu())  # [B, D]
        texts.extend(c for i in idx for c in archive.captions(i))
        bar.update(len(idx))
    caption_emb = [encoder.encode_text(texts[s:s + batch_size]).cpu()
                   for s in range(0, len(texts), batch_size)]
    return {"image_emb": torch.cat(image_emb).float().contiguous(),
            "caption_emb": (torch.cat(caption_emb) if caption_emb
                            else torch.zeros(0, encoder.embed_dim)).float().contiguous()}


def encode_archive(archive_path: str | os.PathLike, encoder, batch_size: int = 256,
                   progress: bool | None = None, chunk_images: int = CHUNK_IMAGES) -> Path:
    """Compute (or reuse) the sidecar of ``archive_path`` under ``encoder``; returns its path.

    ``encoder``: a TextImageEncoder or a spec string. ``progress=None`` shows a bar on a terminal.
    """
    from langfree.data.archive import ImageArchive

    encoder = _resolve_encoder(encoder)
    archive = ImageArchive(archive_path)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")

    def chunk(arch, start, stop, bar):
        return _encode_chunk(arch, encoder, start, stop, batch_size, bar)

    def finish(tensors):
        counts = torch.tensor([0] + [len(archive.captions(i)) for i in range(len(archive))],
                              dtype=torch.int64)
        return {**tensors, "caption_offsets": torch.cumsum(counts, 0)}  # [N + 1]

    return sidecar.build(archive, "features", encoder_fingerprint(encoder), chunk,
                         chunk_images=chunk_images, progress=progress, finish=finish,
                         meta={"spec": encoder.spec})


def load_features(archive_path: str | os.PathLike, encoder, batch_size: int = 256,
                  progress: bool | None = None) -> Features:
    """The archive's embeddings under ``encoder`` (a TextImageEncoder or spec), computed first
    if the sidecar is absent or stale."""
    encoder = _resolve_encoder(encoder)
    path = encode_archive(archive_path, encoder, batch_size=batch_size, progress=progress)
    t, meta = sidecar.load(path)
    return Features(image_emb=t["image_emb"], caption_emb=t["caption_emb"],
                    caption_offsets=t["caption_offsets"], fingerprint=meta["fingerprint"],
                    spec=meta["spec"], path=path)


def caption_choice(seed: int, epoch: int, index: int, count: int) -> int:
    """Which of ``count`` captions image ``index`` uses in ``epoch``: a pure function of its
    arguments (a keyed hash), so batches are reproducible after resume and across workers."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % count


class ConditionedDataset(torch.utils.data.Dataset):
    """Archive images with their precomputed embeddings, for the training loop.

    ``ds[key]`` -> {"image": uint8 [3, H, W], "index": int, "image_emb": float32 [D],
    "text_emb": float32 [D], "has_caption": bool}, ``index = key % N``, ``epoch = key // N``.
    ``text_emb`` is one caption's embedding, chosen by ``caption_choice(seed, epoch, index)``;
    an image without captions gives zeros and ``has_caption`` False (never a random vector
    posing as text, the official LAFITE loader's silent fallback).
    """

    def __init__(self, archive, features: Features, seed: int = 0) -> None:
        if isinstance(archive, (str, os.PathLike)):
            from langfree.data.archive import ImageArchive

            archive = ImageArchive(archive)
        if len(features) != len(archive):
            raise ValueError(f"features {features.path} hold {len(features)} images but archive "
                             f"{archive.path} has {len(archive)}; recompute with 'langfree encode'")
        self.archive, self.features, self.seed = archive, features, int(seed)
        self._zeros = torch.zeros(features.embed_dim, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.archive)

    def __getitem__(self, key: int) -> dict:
        n = len(self.archive)
        index, epoch = int(key) % n, int(key) // n
        item = self.archive[index]
        first, stop = self.features.caption_offsets[index:index + 2].tolist()
        if stop > first:
            text_emb = self.features.caption_emb[first + caption_choice(self.seed, epoch, index, stop - first)]
        else:
            text_emb = self._zeros
        return {"image": item["image"], "index": index, "image_emb": self.features.image_emb[index],
                "text_emb": text_emb, "has_caption": stop > first}
