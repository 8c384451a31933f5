"""langfree's small CLIP: an open_clip CLIP built from a custom config, trained on a captioned archive.

It stands in for a pretrained CLIP on this CPU-only machine (the embedded shapes data at 32 px):
same open_clip model class, open_clip's bundled BPE tokenizer (works offline) and open_clip's
``ClipLoss``; only the sizes are small. Saved in langfree's format::

    DIR/encoder.json         {"format": "langfree-encoder", "format_version": 1, "model_cfg": {...},
                              "tokenizer": "ViT-B-32", "context_length": 32, "image_size": 32,
                              "mean", "std", "weights": "encoder.safetensors", "weights_sha256"}
    DIR/encoder.safetensors  the open_clip state dict
    DIR/metrics.json         held-out retrieval (see ``retrieval_metrics``)

``load_encoder(DIR)`` rebuilds it as an ``OpenClipEncoder``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from langfree.encoders import (
    SMALL_CLIP_BATCH,
    SMALL_CLIP_EMBED_DIM,
    SMALL_CLIP_LR,
    SMALL_CLIP_STEPS,
)
from langfree.encoders.clip import (
    ENCODER_JSON,
    EncoderUnavailable,
    OpenClipEncoder,
    clip_preprocess,
)
from langfree.io import write_bytes, write_json

FORMAT = "langfree-encoder"
FORMAT_VERSION = 1
WEIGHTS = "encoder.safetensors"
METRICS = "metrics.json"
TOKENIZER = "ViT-B-32"  # any open_clip name whose tokenizer is the bundled 49 408-token BPE
MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP constants, as open_clip uses by default
STD = (0.26862954, 0.26130258, 0.27577711)

DEFAULT_STEPS, DEFAULT_BATCH = SMALL_CLIP_STEPS, SMALL_CLIP_BATCH  # see langfree/encoders/__init__.py
DEFAULT_LR, DEFAULT_EMBED_DIM = SMALL_CLIP_LR, SMALL_CLIP_EMBED_DIM


def small_clip_config(embed_dim: int = DEFAULT_EMBED_DIM, width: int = 64, vision_layers: int = 4,
                      text_layers: int = 3, patch_size: int = 8, image_size: int = 32,
                      context_length: int = 32) -> dict:
    """An open_clip model config dict (the schema of open_clip/model_configs/*.json).

    Default: a ViT with 8x8 patches at 32 px (16 tokens + class token, width 64, 4 layers) and a
    3-layer width-64 text transformer over 32 tokens. The 49 408 x 64 token table is most of the
    3.5 M parameters but costs little compute; the text tower costs more FLOPs than the image
    tower. 4x4 patches (64 tokens) cost ~3x more per step; 8x8 already reaches the target.
    """
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": image_size, "layers": vision_layers, "width": width,
                       "head_width": 32, "mlp_ratio": 4.0, "patch_size": patch_size},
        "text_cfg": {"context_length": context_length, "vocab_size": 49408, "width": width,
                     "heads": max(1, width // 32), "layers": text_layers},
    }


def build_model(model_cfg: dict) -> torch.nn.Module:
    """open_clip's CLIP class from a config dict, the way ``open_clip.create_model`` builds a
    registered config (without touching open_clip's global registry)."""
    import open_clip

    return open_clip.CLIP(**model_cfg)


def _encoder(model: torch.nn.Module, meta: dict, spec: str) -> OpenClipEncoder:
    import open_clip

    tokenizer = open_clip.get_tokenizer(meta["tokenizer"], context_length=meta["context_length"])
    return OpenClipEncoder(model, tokenizer, spec=spec, identity=f"{FORMAT}:{meta['tokenizer']}",
                           image_size=meta["image_size"], mean=meta["mean"], std=meta["std"])


def _metadata(model_cfg: dict) -> dict:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "model_cfg": model_cfg,
            "tokenizer": TOKENIZER, "context_length": model_cfg["text_cfg"]["context_length"],
            "image_size": model_cfg["vision_cfg"]["image_size"], "mean": list(MEAN), "std": list(STD),
            "weights": WEIGHTS}


def save_small_clip(model: torch.nn.Module, model_cfg: dict, outdir: str | os.PathLike,
                    extra: dict | None = None) -> Path:
    """Write DIR/encoder.safetensors then DIR/encoder.json (each atomically). The JSON records the
    weights' sha256, so a directory caught between the two renames fails to load loudly."""
    from safetensors.torch import save

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    blob = save(state)
    write_bytes(outdir / WEIGHTS, blob)
    meta = _metadata(model_cfg) | {"weights_sha256": hashlib.sha256(blob).hexdigest()}
    if extra:
        meta["train"] = extra
    write_json(outdir / ENCODER_JSON, meta, indent=1)
    return outdir


def save_random_small_clip(outdir: str | os.PathLike, seed: int = 0, model_cfg: dict | None = None) -> Path:
    """An UNTRAINED small CLIP directory (explicitly random weights), for tests of code that
    needs some encoder. Default: a tiny config (width 32, one layer per tower, D = 16)."""
    torch.manual_seed(seed)
    model_cfg = model_cfg or small_clip_config(embed_dim=16, width=32, vision_layers=1, text_layers=1,
                                               patch_size=8, context_length=16)
    return save_small_clip(build_model(model_cfg), model_cfg, outdir, extra={"untrained": True, "seed": seed})


def load_small_clip(path: str | os.PathLike) -> OpenClipEncoder:
    """Rebuild the encoder saved in a langfree encoder directory."""
    from safetensors.torch import load

    path = Path(path)
    try:
        meta = json.loads((path / ENCODER_JSON).read_text())
    except (OSError, ValueError) as e:
        raise EncoderUnavailable(f"{path / ENCODER_JSON} is unreadable ({e}); retrain with "
                                 "'langfree encoder train'") from e
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise EncoderUnavailable(f"{path / ENCODER_JSON} is not a {FORMAT} v{FORMAT_VERSION} file "
                                 f"(format={meta.get('format')!r}, version={meta.get('format_version')!r})")
    weights = path / meta.get("weights", WEIGHTS)
    try:
        blob = weights.read_bytes()
    except OSError as e:
        raise EncoderUnavailable(f"encoder weights {weights} are missing ({e}); retrain with "
                                 "'langfree encoder train'") from e
    if meta.get("weights_sha256") and hashlib.sha256(blob).hexdigest() != meta["weights_sha256"]:
        raise EncoderUnavailable(f"{weights} does not match {ENCODER_JSON} (an interrupted save?); "
                                 "retrain with 'langfree encoder train'")
    model = build_model(meta["model_cfg"])
    model.load_state_dict(load(blob), strict=True)
    return _encoder(model, meta, spec=str(path.resolve()))


# -- training ----------------------------------------------------------------------------------

def _split(n: int, holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded permutation: the last ``holdout`` indices are held out for retrieval."""
    perm = np.random.default_rng([seed, 7]).permutation(n)
    return np.sort(perm[:-holdout]), np.sort(perm[-holdout:])


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # open_clip's recipe (no weight decay on gains, biases, the logit scale), plus embedding tables
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        exclude = (p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name
                   or "logit_scale" in name or "embedding" in name or "class_embedding" in name)
        (no_decay if exclude else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _captioned_archive(archive_path, holdout: int):
    """(archive, indices of its captioned images): a partly captioned archive trains (and holds
    out) on its captioned images only, saying how many."""
    import sys

    from langfree.data.archive import ImageArchive, captioned_indices

    archive = ImageArchive(archive_path, preload=True)
    n, captioned = len(archive), np.asarray(captioned_indices(archive), dtype=np.int64)
    if len(captioned) == 0:
        raise ValueError(f"{archive.path} has no captions (0 of {n} images have one); the small CLIP "
                         "trains on image-caption pairs (captions as X.txt beside X.png in "
                         "'langfree dataset', or 'langfree shapes DEST.zip')")
    if len(captioned) < 2 * holdout:
        raise ValueError(f"{archive.path} holds {len(captioned)} images with captions (of {n}); "
                         f"training with a held-out split of {holdout} needs at least "
                         f"{2 * holdout} (use --holdout or a larger archive)")
    if len(captioned) < n:
        print(f"{archive.path}: training on the {len(captioned)} of {n} images that have "
              "captions", file=sys.stderr)
    return archive, captioned


class ArchiveSubset:
    """The images ``indices`` of an archive as an archive of their own (index i of the subset is
    image ``indices[i]``), pixels held in memory. Follows the loop's key contract: ``s[key]``
    is image ``key % len(s)``. What ``data.pipeline.build_dataset`` reads: ``path``,
    ``resolution``, ``len``, ``[key]``, ``captions``, ``attributes``, ``images``."""

    def __init__(self, archive, indices) -> None:
        self.archive = archive
        self.indices = [int(i) for i in indices]
        self.path, self.resolution = archive.path, archive.resolution
        self._pixels = archive.images(self.indices)  # uint8 [n, 3, H, W]
        self.has_captions = all(archive.captions(i) for i in self.indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int) -> dict:
        index = int(key) % len(self.indices)
        return {"image": self._pixels[index], "index": index}

    def captions(self, i: int) -> list[str]:
        return self.archive.captions(self.indices[i])

    def attributes(self, i: int) -> dict | None:
        return self.archive.attributes(self.indices[i])

    def source(self, i: int) -> str:
        return self.archive.source(self.indices[i])

    def image(self, i: int) -> np.ndarray:
        return self._pixels[i].permute(1, 2, 0).numpy()

    def images(self, indices) -> torch.Tensor:
        return self._pixels[torch.as_tensor(list(indices), dtype=torch.int64)]


# -- the family on the one training loop -------------------------------------------------------

@dataclass(frozen=True)
class SmallClipConfig:
    """The small CLIP's recipe. The towers' sizes are ``small_clip_config``'s arguments; a full
    open_clip ``model_cfg`` dict, when given, replaces them."""

    embed_dim: int = DEFAULT_EMBED_DIM
    width: int = 64
    vision_layers: int = 4
    text_layers: int = 3
    patch_size: int = 8
    image_size: int = 32
    context_length: int = 32
    model_cfg: dict | None = None
    lr: float = DEFAULT_LR
    weight_decay: float = 0.1
    # 10 % of the default 400 steps of 256 pairs (train_small_clip sets it from --steps)
    warmup_kimg: float = 0.1 * DEFAULT_STEPS * DEFAULT_BATCH / 1000
    max_logit_scale: float = 100.0  # CLIP's cap on the learnable temperature

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_kimg < 0:
            raise ValueError(f"small CLIP: lr {self.lr} must be > 0, weight_decay "
                             f"{self.weight_decay} and warmup_kimg {self.warmup_kimg} >= 0")

    def open_clip_config(self) -> dict:
        if self.model_cfg is not None:
            return dict(self.model_cfg)
        return small_clip_config(self.embed_dim, self.width, self.vision_layers, self.text_layers,
                                 self.patch_size, self.image_size, self.context_length)


class SmallClipFamily:
    """langfree's small CLIP as a family of the one loop: one phase, AdamW (open_clip's
    no-decay groups), linear warm-up then cosine, open_clip's symmetric InfoNCE (``ClipLoss``)
    with a learnable logit scale clamped at ``max_logit_scale``. Each step sees a batch of
    images and one caption of each (the epoch's choice, ``data.features.caption_choice``).
    Not an image generator: its snapshot exports the encoder directory ``load_small_clip``
    reads (``export/encoder.json`` + ``export/encoder.safetensors``)."""

    name: ClassVar[str] = "small-clip"
    Config: ClassVar[type] = SmallClipConfig
    needs = frozenset({"image", "captions"})

    def __init__(self, config: SmallClipConfig, encoder=None):
        import open_clip

        self.config, self.encoder = config, None
        self.model_cfg = config.open_clip_config()
        self.meta = _metadata(self.model_cfg)
        self.clip = build_model(self.model_cfg).train()
        self.tokenizer = open_clip.get_tokenizer(TOKENIZER, context_length=self.meta["context_length"])
        self._tokens: dict[str, torch.Tensor] = {}  # caption -> token ids [L], tokenised once
        self._mean = torch.tensor(MEAN).view(1, 3, 1, 1)
        self._std = torch.tensor(STD).view(1, 3, 1, 1)
        self._loss = open_clip.ClipLoss()
        self._optimizers = None
        self.last_loss = float("nan")

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"clip": self.clip}

    def ema_pairs(self) -> list[tuple[str, str]]:
        return []

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        if self._optimizers is None:
            cfg = self.config
            from langfree.families.base import adam

            self._optimizers = {"main": adam(_param_groups(self.clip, cfg.weight_decay), cfg.lr,
                                             (0.9, 0.98), eps=1e-6)}
        return self._optimizers

    def lr_schedule(self):
        from langfree.families.base import LRSchedule

        return LRSchedule(warmup_kimg=self.config.warmup_kimg, kind="cosine")

    def phases(self):
        from langfree.families.base import Phase

        return [Phase("main", ("clip",), "main")]

    def tokens(self, texts: list[str]) -> torch.Tensor:
        """Token ids [B, L] of ``texts`` (each caption is tokenised once per run)."""
        new = [t for t in dict.fromkeys(texts) if t not in self._tokens]
        if new:
            self._tokens.update(zip(new, self.tokenizer(new)))
        return torch.stack([self._tokens[t] for t in texts])

    def loss(self, phase, nets, batch, progress):
        from langfree.families.base import LossOutput

        model = nets["clip"]
        with torch.no_grad():  # the cap applies to every step's scale (CLIP clamps after each step)
            model.logit_scale.clamp_(0, math.log(self.config.max_logit_scale))
        keep = [i for i, c in enumerate(batch["caption"]) if c]  # a partly captioned archive
        if len(keep) < 2:
            zero = sum(p.sum() for p in model.parameters()) * 0.0
            return LossOutput(zero, {"pairs": float(len(keep))})
        image = batch["image"][keep] if len(keep) < len(batch["caption"]) else batch["image"]
        x = clip_preprocess(image, self.meta["image_size"], self._mean.to(image.device),
                            self._std.to(image.device))  # [B, 3, S, S]
        tokens = self.tokens([batch["caption"][i] for i in keep]).to(image.device)  # [B, L]
        image_f = model.encode_image(x, normalize=True)  # [B, D]
        text_f = model.encode_text(tokens, normalize=True)  # [B, D]
        scale = model.logit_scale.exp()
        loss = self._loss(image_f, text_f, scale)
        self.last_loss = float(loss.detach())
        return LossOutput(loss, {"logit_scale": float(scale.detach()), "pairs": float(len(keep))})

    def as_encoder(self, spec: str = "(training)") -> OpenClipEncoder:
        """The model as an encoder (eval mode, frozen: call ``clip.train()`` to go on training)."""
        return _encoder(self.clip, self.meta, spec=spec)

    def export(self, dirpath: Path) -> None:
        save_small_clip(self.clip, self.model_cfg, dirpath)


def train_small_clip(archive_path: str | os.PathLike, outdir: str | os.PathLike,
                     steps: int = DEFAULT_STEPS, batch: int = DEFAULT_BATCH, seed: int = 0,
                     embed_dim: int = DEFAULT_EMBED_DIM, lr: float = DEFAULT_LR,
                     weight_decay: float = 0.1, warmup: int | None = None, holdout: int = 1000,
                     model_cfg: dict | None = None, progress: bool = True, eval_every: int = 0) -> dict:
    """Train a small CLIP on a captioned archive, save it in ``outdir``, return its metrics.

    Trains ``SmallClipFamily`` on the one loop (``langfree.training.loop.train``) for
    ``steps · batch`` images: each step draws ``batch`` training images and, for each, one of its
    captions (a seeded choice per epoch; all phrasings are used). AdamW with a linear warm-up
    (``warmup`` steps) and cosine decay; open_clip's ClipLoss with a learnable logit scale (clamped
    at 100, as in CLIP). No augmentation: flips or crops would change the positions the captions
    describe. ``holdout`` images (a seeded split) are never trained on and give ``metrics.json``;
    ``eval_every`` > 0 also prints their retrieval every so many steps. The loop's run directory
    (log, stats) is temporary; ``outdir`` gets the encoder directory and ``metrics.json``.
    """
    import contextlib
    import shutil
    import sys
    import tempfile

    from langfree.data.pipeline import build_dataset
    from langfree.training.loop import train
    from langfree.training.options import TrainOptions

    if steps < 1 or batch < 2:
        raise ValueError(f"steps must be >= 1 and batch >= 2 (got steps={steps}, batch={batch})")
    archive, captioned = _captioned_archive(archive_path, holdout)
    train_idx, eval_idx = (captioned[part] for part in _split(len(captioned), holdout, seed))
    if len(train_idx) < batch:
        raise ValueError(f"{archive.path}: {len(train_idx)} training images is less than one batch of {batch}")
    warmup = min(200, max(1, steps // 10)) if warmup is None else warmup
    config = SmallClipConfig(embed_dim=embed_dim, model_cfg=model_cfg, lr=lr,
                             weight_decay=weight_decay, warmup_kimg=warmup * batch / 1000)
    torch.manual_seed(seed)  # initial weights
    family = SmallClipFamily(config)
    dataset = build_dataset(family, ArchiveSubset(archive, train_idx), seed=seed, progress=False)
    kimg = steps * batch / 1000
    # ten status lines in the (temporary) log; --eval-every: a tick (snapshot + retrieval) each N steps
    tick_kimg = eval_every * batch / 1000 if eval_every else kimg / 10

    def evaluate(snapshot_dir):  # --eval-every: held-out retrieval at each tick
        m = retrieval_metrics(family.as_encoder(), archive, eval_idx, seed)
        family.clip.train()
        print(f"retrieval_top1 {m['retrieval_top1']:.3f} (exact {m['retrieval_top1_exact']:.3f}), "
              f"loss {family.last_loss:.3f}", file=sys.stderr, flush=True)
        return []

    tmp = tempfile.mkdtemp(prefix="langfree-small-clip-")  # the loop's run dir (log, stats)
    options = TrainOptions(outdir=tmp, kimg=kimg, batch=batch, tick_kimg=tick_kimg,
                           snap=1 if eval_every else 0, seed=seed, desc="small-clip")
    run_config = {"command": "encoder train", "data": str(Path(archive_path).resolve()),
                  "holdout": holdout, "steps": steps}
    start = time.perf_counter()
    sink = sys.stderr if progress else open(os.devnull, "w")  # the loop's log lines
    try:
        with contextlib.redirect_stdout(sink):
            train(family, dataset, options, run_config, metrics=evaluate if eval_every else None)
    finally:
        if sink is not sys.stderr:
            sink.close()
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - start

    encoder = family.as_encoder(spec=str(Path(outdir).resolve()))  # eval(), frozen
    metrics = retrieval_metrics(encoder, archive, eval_idx, seed=seed)
    metrics.update({"final_loss": family.last_loss, "steps": steps, "batch": batch, "seed": seed,
                    "lr": lr, "train_images": len(train_idx),
                    "captioned_images": len(captioned), "archive_images": len(archive), "train_seconds": round(seconds, 1),
                    "images_per_second": round(steps * batch / seconds, 1),
                    "torch_threads": torch.get_num_threads()})
    train_info = {"archive": str(Path(archive_path).resolve()), "steps": steps, "batch": batch,
                  "seed": seed, "lr": lr, "holdout": holdout}
    save_small_clip(family.clip, family.model_cfg, outdir, extra=train_info)
    write_json(Path(outdir) / METRICS, metrics, indent=1)
    return metrics


# -- evaluation --------------------------------------------------------------------------------

MAIN_ATTRIBUTES = ("shape", "color", "size", "position")


def _attribute_key(attrs: dict | None, index: int):
    """Images with the same key count as the same retrieval target; without attributes, only
    the image itself does."""
    if not attrs:
        return ("image", index)
    return tuple(attrs.get(k) for k in MAIN_ATTRIBUTES)


@torch.no_grad()
def retrieval_metrics(encoder: OpenClipEncoder, archive, indices, seed: int = 0,
                      batch_size: int = 500) -> dict:
    """Top-1 retrieval between held-out images and one caption each (a seeded random phrasing).

    text->image (``retrieval_top1``): for each caption, the nearest held-out image. Many shapes
    images share the same main-object attributes (shape, colour, size, position), and a caption
    cannot tell them apart, so a hit is the caption's own image OR any image whose main-object
    ground-truth attributes are identical (background and second object are ignored). Without
    attributes (non-shapes data) only the own image counts. ``*_exact`` counts the own image only.
    image->text (``image_to_text_top1``): the nearest caption to each image, same hit rule.
    """
    indices = [int(i) for i in indices]
    rng = np.random.default_rng([seed, 11])
    texts = [archive.captions(i)[rng.integers(len(archive.captions(i)))] for i in indices]
    image_emb = torch.cat([encoder.encode_image(archive.images(indices[s:s + batch_size]).float() / 127.5 - 1)
                           for s in range(0, len(indices), batch_size)])  # [K, D]
    text_emb = torch.cat([encoder.encode_text(texts[s:s + batch_size])
                          for s in range(0, len(texts), batch_size)])  # [K, D]
    keys = [_attribute_key(archive.attributes(i), i) for i in indices]
    key_ids = torch.tensor([{k: j for j, k in enumerate(dict.fromkeys(keys))}[k] for k in keys])  # [K]
    sim = text_emb @ image_emb.T  # [K texts, K images]
    own = torch.arange(len(indices))
    t2i, i2t = sim.argmax(dim=1), sim.argmax(dim=0)  # [K], [K]
    paired = sim.diagonal()
    unpaired = (sim.sum() - paired.sum()) / max(1, len(indices) * (len(indices) - 1))
    return {
        "retrieval_top1": (key_ids[t2i] == key_ids).float().mean().item(),
        "retrieval_top1_exact": (t2i == own).float().mean().item(),
        "image_to_text_top1": (key_ids[i2t] == key_ids).float().mean().item(),
        "image_to_text_top1_exact": (i2t == own).float().mean().item(),
        "eval_pairs": len(indices),
        "distinct_attribute_sets": int(key_ids.max().item()) + 1,
        # The modality gap: how close a caption's feature sits to its own image's feature
        # (pretrained CLIP ViT-B/32: about 0.3). LAFITE-G's noise level is chosen from it.
        "paired_cosine": paired.mean().item(),
        "unpaired_cosine": unpaired.item(),
        "hit_rule": "own image, or identical main-object shape/color/size/position "
                    "(own image only when the archive has no attributes)",
    }
