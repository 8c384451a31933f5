"""Shapes attribute evaluator: does a generated image show what its prompt asked for?

A small CNN with one softmax head per attribute (shape, colour, size, position of the main
object; ``langfree.data.shapes.ATTRIBUTES``) is trained on the ground-truth attributes of a shapes
archive. Its accuracy on held-out REAL images is the ceiling of ``attribute_accuracy``: a
generator cannot score better than the judge reads real data.

``attribute_accuracy`` prompts the generator with canonical captions
("a large red circle at the top left") of a balanced, seeded set of attribute combinations and
reports per-attribute accuracy plus ``overall`` (all four right), beside the ceiling and chance.

Saved as ``evaluator.safetensors`` + ``evaluator.json`` (classes, resolution, ceiling).
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from langfree.encoders.base import TextImageEncoder
from langfree.io import atomic_write, write_json

FORMAT = "langfree-attribute-evaluator"
WEIGHTS, META = "evaluator.safetensors", "evaluator.json"
# The four attributes of the main object; background and the optional second object are not judged.
JUDGED = ("shape", "color", "size", "position")

Generate = Callable[[torch.Tensor, list[int]], torch.Tensor]


class AttributeNet(nn.Module):
    """uint8-free core: [B, 3, R, R] in [-1, 1] -> {attribute: logits [B, C]}.

    Three stride-2 convs keep a 4x4 map (at R = 32) that is flattened, not pooled: position is
    an attribute, and global pooling would throw it away."""

    def __init__(self, num_classes: dict[str, int], resolution: int = 32, width: int = 32) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(4 * w, 4 * w, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
        )
        side = resolution // 8
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * side * side, 256), nn.LeakyReLU(0.2))
        self.heads = nn.ModuleDict({k: nn.Linear(256, c) for k, c in num_classes.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.body(x)  # (B, 4w, R/8, R/8)
        h = self.trunk(h)  # (B, 256)
        return {k: head(h) for k, head in self.heads.items()}  # {name: (B, C_name)}


class AttributeEvaluator:
    """A trained AttributeNet with its class names, input resolution and ceiling."""

    def __init__(self, net: AttributeNet, attributes: dict[str, list[str]], resolution: int,
                 ceiling: dict[str, float] | None = None, info: dict | None = None) -> None:
        self.net = net.eval()
        self.attributes = attributes
        self.resolution = resolution
        self.ceiling = dict(ceiling or {})
        self.info = dict(info or {})

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, 3, H, W] -> float [N, 3, R, R] in [-1, 1] (antialiased resize when H != R)."""
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"evaluator expects uint8 [N, 3, H, W], got {images.dtype} {list(images.shape)}")
        x = images.float() / 127.5 - 1.0
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear",
                              antialias=True, align_corners=False)
        return x

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch: int = 256) -> dict[str, torch.Tensor]:
        """uint8 [N, 3, H, W] -> {attribute: class index [N] int64}."""
        out: dict[str, list[torch.Tensor]] = {k: [] for k in self.attributes}
        for i in range(0, len(images), batch):
            logits = self.net(self.prepare(images[i:i + batch]))
            for k, preds in out.items():
                preds.append(logits[k].argmax(1))
        return {k: torch.cat(v) for k, v in out.items()}

    def accuracy(self, images: torch.Tensor, labels: dict[str, torch.Tensor]) -> dict[str, float]:
        """Per-attribute accuracy and ``overall`` (every judged attribute right)."""
        pred = self.predict(images)
        right = {k: pred[k] == labels[k] for k in self.attributes}
        result = {k: float(v.float().mean()) for k, v in right.items()}
        result["overall"] = float(torch.stack(list(right.values())).all(0).float().mean())
        return result


def _labels(archive, indices: list[int], attributes: dict[str, list[str]]) -> dict[str, torch.Tensor]:
    labels: dict[str, list[int]] = {k: [] for k in attributes}
    for i in indices:
        attrs = archive.attributes(i)
        if not attrs:
            raise ValueError(f"image {i} of {archive.path} has no attributes: the attribute "
                             "evaluator trains on a shapes archive (langfree data shapes ...)")
        for k, classes in attributes.items():
            labels[k].append(classes.index(attrs[k]))
    return {k: torch.tensor(v) for k, v in labels.items()}


def save_attribute_evaluator(evaluator: AttributeEvaluator, outdir: str | os.PathLike) -> Path:
    """Weights first, JSON last (the JSON marks a complete evaluator), each written atomically."""
    from safetensors.torch import save_file

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in evaluator.net.state_dict().items()}
    atomic_write(outdir / WEIGHTS, lambda p: save_file(state, str(p)))
    meta = {"format": FORMAT, "version": 1, "attributes": evaluator.attributes,
            "resolution": evaluator.resolution, "width": evaluator.net.body[0].out_channels,
            "ceiling": evaluator.ceiling, **evaluator.info}
    write_json(outdir / META, meta, indent=1)
    return outdir


def load_attribute_evaluator(path: str | os.PathLike) -> AttributeEvaluator:
    """Load an evaluator directory written by ``train_attribute_evaluator``."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / META).is_file() or not (path / WEIGHTS).is_file():
        raise FileNotFoundError(f"{path} is not an attribute evaluator directory (needs {META} and "
                                f"{WEIGHTS}); train one with train_attribute_evaluator")
    meta = json.loads((path / META).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path / META}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    attributes = meta["attributes"]
    net = AttributeNet({k: len(v) for k, v in attributes.items()}, meta["resolution"], meta["width"])
    net.load_state_dict(load_file(str(path / WEIGHTS)))
    info = {k: v for k, v in meta.items() if k not in ("format", "version", "attributes",
                                                      "resolution", "width", "ceiling")}
    return AttributeEvaluator(net, attributes, meta["resolution"], meta["ceiling"], info)


# ---------------------------------------------------------------------- on the engine
@dataclass(frozen=True)
class EvaluatorConfig:
    resolution: int = 32          # input side; other archive resolutions are resized to it
    width: int = 32
    lr: float = 2e-3

    def __post_init__(self) -> None:
        if self.resolution < 8 or self.resolution % 8 or self.width < 1 or self.lr <= 0:
            raise ValueError(f"attribute evaluator: resolution {self.resolution} must be a "
                             f"multiple of 8, width {self.width} >= 1 and lr {self.lr} > 0")


class AttributeEvaluatorFamily:
    """The shapes attribute evaluator as a family of the one loop: one phase, Adam, the sum of
    one cross-entropy per judged attribute. Labels come from the archive's ground truth: the
    family holds them as a tensor [N, 4] (``set_labels``) and reads ``batch["index"]``. Not an
    image generator: its snapshot exports an evaluator directory (``export/``) that
    ``load_attribute_evaluator`` reads (without a ceiling: ``train_attribute_evaluator`` holds
    images out and measures it)."""

    name: ClassVar[str] = "attribute-evaluator"
    Config: ClassVar[type] = EvaluatorConfig
    needs = frozenset({"image"})

    def __init__(self, config: EvaluatorConfig, encoder=None):
        from langfree.data.shapes import ATTRIBUTES

        self.config, self.encoder = config, None
        self.attributes = {k: list(ATTRIBUTES[k]) for k in JUDGED}
        self.net = AttributeNet({k: len(v) for k, v in self.attributes.items()},
                                config.resolution, config.width)
        self.labels: torch.Tensor | None = None  # [N, len(JUDGED)] int64, archive order
        self._optimizers = None

    def set_labels(self, archive) -> None:
        """Read the ground-truth attributes of every image of ``archive`` (the training data)."""
        labels = _labels(archive, range(len(archive)), self.attributes)
        self.labels = torch.stack([labels[k] for k in self.attributes], 1)

    def evaluator(self) -> AttributeEvaluator:
        return AttributeEvaluator(self.net, self.attributes, self.config.resolution)

    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def ema_pairs(self) -> list[tuple[str, str]]:
        return []

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        if self._optimizers is None:
            from langfree.families.base import adam

            self._optimizers = {"main": adam(self.net.parameters(), self.config.lr,
                                             decoupled=False)}
        return self._optimizers

    def phases(self):
        from langfree.families.base import Phase

        return [Phase("main", ("net",), "main")]

    def loss(self, phase, nets, batch, progress):
        from langfree.families.base import LossOutput

        if self.labels is None:
            raise ValueError("attribute evaluator: no labels; call set_labels(archive) (the "
                             "train command's prepare step does) before training")
        x = batch["image"]  # [B, 3, H, W] in [-1, 1]
        r = self.config.resolution
        if x.shape[-1] != r or x.shape[-2] != r:
            x = F.interpolate(x, size=(r, r), mode="bilinear", antialias=True, align_corners=False)
        y = self.labels.to(x.device)[batch["index"]]  # [B, len(JUDGED)]
        logits = nets["net"](x)
        losses = {k: F.cross_entropy(logits[k], y[:, j]) for j, k in enumerate(self.attributes)}
        return LossOutput(sum(losses.values()), {f"ce_{k}": float(v.detach()) for k, v in losses.items()})

    def export(self, dirpath: Path) -> None:
        save_attribute_evaluator(self.evaluator(), dirpath)


def prepare_evaluator(family: AttributeEvaluatorFamily, ctx) -> None:
    """``langfree train attribute-evaluator``: labels from the training archive's attributes."""
    family.set_labels(ctx.archive)


def train_attribute_evaluator(archive_path: str | os.PathLike, outdir: str | os.PathLike | None = None,
                              *, epochs: int = 10, batch: int = 32, lr: float = 2e-3,
                              heldout: float = 0.1, max_images: int | None = None, seed: int = 0,
                              resolution: int = 32, width: int = 32,
                              log: Callable[[str], None] | None = None
                              ) -> tuple[AttributeEvaluator, dict[str, float]]:
    """Train on a shapes archive; returns (evaluator, ceiling) and saves to ``outdir`` if given.

    Trains ``AttributeEvaluatorFamily`` on the one loop (``langfree.training.loop.train``) for
    ``epochs`` passes over the training images (kimg = epochs · train images / 1000).
    ``heldout`` of the images (a seeded choice) are never trained on; the accuracy there is the
    ceiling. A few thousand 32 px images and ~6 epochs take about a minute on 2 CPU cores."""
    import contextlib
    import shutil
    import sys
    import tempfile

    from langfree.data.archive import ImageArchive
    from langfree.data.pipeline import build_dataset
    from langfree.encoders.small_clip import ArchiveSubset
    from langfree.training.loop import train
    from langfree.training.options import TrainOptions

    archive = ImageArchive(archive_path)
    count = len(archive) if max_images is None else min(len(archive), max_images)
    order = torch.randperm(len(archive), generator=torch.Generator().manual_seed(seed))[:count].tolist()
    n_test = max(1, round(count * heldout))
    if count - n_test < 2:
        raise ValueError(f"{archive_path} has {count} images; the evaluator needs at least a few "
                         "hundred (write a larger shapes archive)")
    train_idx, test_idx = order[n_test:], order[:n_test]
    if epochs < 1 or batch < 1:
        raise ValueError(f"epochs {epochs} and batch {batch} must be >= 1")

    torch.manual_seed(seed)  # weight init; callers that care about their RNG fork it
    family = AttributeEvaluatorFamily(EvaluatorConfig(resolution, width, lr))
    subset = ArchiveSubset(archive, train_idx)
    family.set_labels(subset)
    dataset = build_dataset(family, subset, seed=seed, progress=False)
    attributes = family.attributes
    test_images = archive.images(test_idx)  # uint8 [n_test, 3, H, W]
    y_test = _labels(archive, test_idx, attributes)

    kimg = epochs * len(train_idx) / 1000
    tmp = tempfile.mkdtemp(prefix="langfree-evaluator-")  # the loop's run dir (log, stats)
    options = TrainOptions(outdir=tmp, kimg=kimg, batch=batch, tick_kimg=len(train_idx) / 1000,
                           snap=0, seed=seed, desc="attribute-evaluator")
    run_config = {"command": "train_attribute_evaluator", "data": str(Path(archive_path).resolve()),
                  "heldout": heldout, "epochs": epochs}
    start = time.time()
    try:
        with contextlib.redirect_stdout(sys.stderr if log else open(os.devnull, "w")) as sink:
            try:
                train(family, dataset, options, run_config)
            finally:
                if sink is not sys.stderr:
                    sink.close()
        if log:
            ticks = [json.loads(line) for line in next(Path(tmp).glob("*/stats.jsonl")).open()]
            for epoch, tick in enumerate(ticks, 1):
                log(f"evaluator epoch {epoch}/{len(ticks)}: loss {tick.get('Loss/main/loss', float('nan')):.3f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    evaluator = family.evaluator()
    evaluator.net.eval()
    ceiling = evaluator.accuracy(test_images, y_test)
    evaluator.ceiling = ceiling
    evaluator.info = {"train": {"archive": str(Path(archive_path).resolve()),
                                "archive_bytes": Path(archive_path).stat().st_size,
                                "train_images": len(train_idx),
                                "heldout_images": n_test, "epochs": epochs, "seed": seed,
                                "seconds": round(time.time() - start, 1)}}
    if outdir is not None:
        save_attribute_evaluator(evaluator, outdir)
    return evaluator, ceiling


def balanced_prompts(n: int, seed: int = 0, attributes: dict[str, list[str]] | None = None
                     ) -> list[tuple[str, dict]]:
    """``n`` (canonical caption, attributes) pairs: every combination of the judged attributes in a
    seeded order, repeated as needed, so each class appears equally often up to rounding."""
    from langfree.data.shapes import ATTRIBUTES, caption

    attributes = attributes or {k: list(ATTRIBUTES[k]) for k in JUDGED}
    keys = list(attributes)
    combos = list(itertools.product(*(attributes[k] for k in keys)))
    gen = torch.Generator().manual_seed(seed)
    out: list[tuple[str, dict]] = []
    while len(out) < n:
        for j in torch.randperm(len(combos), generator=gen).tolist():
            attrs = dict(zip(keys, combos[j]))
            out.append((caption(attrs), attrs))
            if len(out) == n:
                break
    return out


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] float in [-1, 1] -> uint8 (round half up, StyleGAN convention)."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"generator must return [B, 3, H, W], got {list(images.shape)}")
    return (images.detach().float().cpu() * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def attribute_accuracy(generate: Generate, encoder: TextImageEncoder, evaluator: AttributeEvaluator,
                       n: int = 945, seed: int = 0, batch: int = 32) -> dict:
    """Generate image i from the canonical caption of combination i with seed ``seed + i`` and
    score the evaluator's reading of it. Returns per-attribute accuracy, ``overall``, ``ceiling``
    (the evaluator on real held-out images), ``chance`` and the protocol."""
    if n < 1:
        raise ValueError(f"attribute_accuracy needs n >= 1 samples, got {n}")
    prompts = balanced_prompts(n, seed, evaluator.attributes)
    texts = [p for p, _ in prompts]
    labels = {k: torch.tensor([v.index(a[k]) for _, a in prompts]) for k, v in evaluator.attributes.items()}
    from langfree.sampling.conditions import Conditions, encode_texts

    conditions = Conditions(prompts=list(texts), embeddings=encode_texts(encoder, texts))  # (n, D)
    images = []
    for i in range(0, n, batch):
        seeds = [seed + j for j in range(i, min(i + batch, n))]
        with torch.no_grad():
            images.append(to_uint8(generate(conditions.select(range(i, i + len(seeds))), seeds)))
    result = evaluator.accuracy(torch.cat(images), labels)
    chance = {k: 1.0 / len(v) for k, v in evaluator.attributes.items()}
    overall_chance = 1.0
    for v in chance.values():
        overall_chance *= v
    chance["overall"] = overall_chance
    return {**result, "value": result["overall"], "ceiling": evaluator.ceiling, "chance": chance,
            "num": n, "seed": seed, "prompts": "canonical shapes captions, balanced combinations",
            "encoder": encoder.spec}
