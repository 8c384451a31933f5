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
from pathlib import Path

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


def _cosine_with_warmup(step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * t))


def _captioned_archive(archive_path, holdout: int):
    from langfree.data.archive import ImageArchive

    archive = ImageArchive(archive_path, preload=True)
    n = len(archive)
    if not archive.has_captions:
        missing = sum(1 for i in range(n) if not archive.captions(i))
        raise ValueError(f"{archive.path}: {missing} of {n} images have no caption; the small CLIP "
                         "trains on captioned data (e.g. 'langfree shapes DEST.zip')")
    if n < 2 * holdout:
        raise ValueError(f"{archive.path} holds {n} images; training with a held-out split of "
                         f"{holdout} needs at least {2 * holdout} (use --holdout or a larger archive)")
    return archive


def _epochs(pool: np.ndarray, batch: int, gen: torch.Generator):
    """Endless batches of indices [B]: each epoch a fresh permutation of ``pool`` (a partial
    last batch is dropped, so every contrastive batch has ``batch`` pairs)."""
    pool = torch.from_numpy(pool)
    while True:
        order = pool[torch.randperm(len(pool), generator=gen)]
        for start in range(0, len(order) - batch + 1, batch):
            yield order[start:start + batch]


def train_small_clip(archive_path: str | os.PathLike, outdir: str | os.PathLike,
                     steps: int = DEFAULT_STEPS, batch: int = DEFAULT_BATCH, seed: int = 0,
                     embed_dim: int = DEFAULT_EMBED_DIM, lr: float = DEFAULT_LR,
                     weight_decay: float = 0.1, warmup: int | None = None, holdout: int = 1000,
                     model_cfg: dict | None = None, progress: bool = True, eval_every: int = 0) -> dict:
    """Train a small CLIP on a captioned archive, save it in ``outdir``, return its metrics.

    Each step draws ``batch`` training images and, for each, one of its captions at random (all
    phrasings are used). AdamW with a linear warm-up and cosine decay; open_clip's ClipLoss with a
    learnable logit scale (clamped at 100, as in CLIP). No augmentation: flips or crops would change
    the positions the captions describe. ``holdout`` images (a seeded split) are never trained on
    and give ``metrics.json``; ``eval_every`` > 0 also prints their retrieval every so many steps.
    """
    import open_clip
    from tqdm.auto import tqdm

    if steps < 1 or batch < 2:
        raise ValueError(f"steps must be >= 1 and batch >= 2 (got steps={steps}, batch={batch})")
    archive = _captioned_archive(archive_path, holdout)
    train_idx, eval_idx = _split(len(archive), holdout, seed)
    if len(train_idx) < batch:
        raise ValueError(f"{archive.path}: {len(train_idx)} training images is less than one batch of {batch}")
    model_cfg = model_cfg or small_clip_config(embed_dim=embed_dim, image_size=32)
    meta = _metadata(model_cfg)

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_model(model_cfg).train()
    tokenizer = open_clip.get_tokenizer(TOKENIZER, context_length=meta["context_length"])
    captions = [archive.captions(i) for i in range(len(archive))]
    tokens = tokenizer([c for caps in captions for c in caps])  # [M, L], all phrasings, once
    offsets = torch.tensor(np.cumsum([0] + [len(c) for c in captions]), dtype=torch.int64)  # [N+1]
    images = archive.images(range(len(archive)))  # uint8 [N, 3, H, W]
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)

    optimizer = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6,
                                  fused=True)  # fused: one kernel over all tensors, ~2x faster on CPU
    warmup = min(200, max(1, steps // 10)) if warmup is None else warmup
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _cosine_with_warmup(s, steps, warmup))
    loss_fn = open_clip.ClipLoss()
    batches = _epochs(train_idx, batch, gen)
    bar = tqdm(range(steps), desc="small CLIP", unit="step", disable=not progress)
    start, loss_value = time.perf_counter(), float("nan")
    for step in bar:
        idx = next(batches)  # [B]
        counts = offsets[idx + 1] - offsets[idx]  # [B] captions per image
        pick = offsets[idx] + (torch.rand(len(idx), generator=gen) * counts).long()  # [B] one caption each
        x = clip_preprocess(images[idx].float() / 127.5 - 1, meta["image_size"], mean, std)  # [B,3,S,S]
        image_f = model.encode_image(x, normalize=True)  # [B, D]
        text_f = model.encode_text(tokens[pick], normalize=True)  # [B, D]
        loss = loss_fn(image_f, text_f, model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))  # CLIP's cap on the temperature
        loss_value = loss.item()
        bar.set_postfix(loss=f"{loss_value:.3f}", scale=f"{model.logit_scale.exp().item():.1f}")
        if eval_every and (step + 1) % eval_every == 0 and step + 1 < steps:
            m = retrieval_metrics(_encoder(model, meta, spec="(training)"), archive, eval_idx, seed)
            model.train().requires_grad_(True)  # the encoder wrapper froze it for evaluation
            bar.write(f"step {step + 1}: retrieval_top1 {m['retrieval_top1']:.3f} "
                      f"(exact {m['retrieval_top1_exact']:.3f}), loss {loss_value:.3f}")
    seconds = time.perf_counter() - start

    encoder = _encoder(model, meta, spec=str(Path(outdir).resolve()))  # eval(), frozen
    metrics = retrieval_metrics(encoder, archive, eval_idx, seed=seed)
    metrics.update({"final_loss": loss_value, "steps": steps, "batch": batch, "seed": seed, "lr": lr,
                    "train_images": len(train_idx), "train_seconds": round(seconds, 1),
                    "images_per_second": round(steps * batch / seconds, 1),
                    "torch_threads": torch.get_num_threads()})
    train_info = {"archive": str(Path(archive_path).resolve()), "steps": steps, "batch": batch,
                  "seed": seed, "lr": lr, "holdout": holdout}
    save_small_clip(model, model_cfg, outdir, extra=train_info)
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
