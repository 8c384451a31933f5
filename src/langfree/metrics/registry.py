"""Named metrics over deterministic per-seed samples; the name is the protocol.

``fid10k_full``: FID between 10 000 generated images and ALL reference images ("full", as in
StyleGAN2-ADA). Generated image i uses seed ``seed + i`` and the condition of reference caption
i (the official protocol of conditioning on test-set captions: image ``i % N``, caption ``(i // N) % C``);
when the reference archive has no captions, its image embeddings are the conditions and every
result says ``"conditions": "image_embeddings"``.

Names (``<n>`` is a count, ``k`` multiplies by 1000; ``--num`` overrides it):
  fid<n>[k]_full, kid<n>[k]_full   FID / KID (raw, not x1000) against all reference images
  is<n>[k]                          Inception Score (needs Inception weights, else unavailable)
  clip_score[<n>[k]]                100 * max(cos(image, prompt), 0), mean (default n 1000)
  r_precision[<n>[k]]               text->image R-precision, 1 true + up to 99 other prompts
  attribute_accuracy[<n>[k]]        shapes evaluator on canonical prompts (default n 945)
  diversity[<n>[k]]                 shapes: n / 16 canonical prompts x seeds 0-15; within-prompt mean
                                    |pixel difference| over real images with the prompt's
                                    attributes (default n 1024; also in image-embedding space)
  unprompted_coverage[<n>[k]]       shapes: share of the data's background colours among the 16
                                    seeds of one prompt, mean over prompts (same samples)
  pr<n>[k]3                         improved precision/recall, k = 3 (as StyleGAN2-ADA's pr50k3),
                                    on the FID extractor's features, n generated vs n real

FID/KID/IS, clip_score and r_precision of one call share one set of generated images: sample i
is the same image whichever metric asks for it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from langfree.encoders.base import TextImageEncoder
from langfree.metrics import diversity as div
from langfree.metrics.attributes import AttributeEvaluator, attribute_accuracy, to_uint8
from langfree.metrics.distribution import (
    frechet_distance,
    inception_score,
    kernel_distance,
)
from langfree.metrics.extractors import FeatureExtractor, resolve_extractor
from langfree.sampling.conditions import Conditions
from langfree.sampling.generate import sample_grid

# (Conditions rows, seeds) -> [B, 3, H, W] in [-1, 1] (langfree.sampling.conditions.Conditions)
Generate = Callable[[Any, list[int]], torch.Tensor]

_NUM = r"(?:(\d+)(k?))"
PATTERNS: dict[str, re.Pattern] = {
    "fid": re.compile(rf"fid{_NUM}_full"),
    "kid": re.compile(rf"kid{_NUM}_full"),
    "is": re.compile(rf"is{_NUM}"),
    "clip_score": re.compile(rf"clip_score{_NUM}?"),
    "r_precision": re.compile(rf"r_precision{_NUM}?"),
    "attribute_accuracy": re.compile(rf"attribute_accuracy{_NUM}?"),
    "diversity": re.compile(rf"diversity{_NUM}?"),
    "unprompted_coverage": re.compile(rf"unprompted_coverage{_NUM}?"),
    "pr": re.compile(rf"pr{_NUM}3"),
}
DEFAULT_NUM = {"clip_score": 1000, "r_precision": 1000, "attribute_accuracy": 945,
               "diversity": 1024, "unprompted_coverage": 1024}
SEEDS_PER_PROMPT = 16  # diversity / unprompted_coverage: seeds 0-15 of each prompt (issue 9)
PR_K = 3
R_PRECISION_CANDIDATES = 100  # 1 true prompt + 99 others, as in AttnGAN / DALL-Eval


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str
    num: int


def parse_metric(name: str, num: int | None = None) -> MetricSpec:
    """``'fid10k_full'`` -> MetricSpec('fid10k_full', 'fid', 10000); ``num`` overrides the count."""
    for kind, pattern in PATTERNS.items():
        m = pattern.fullmatch(name)
        if m:
            count = DEFAULT_NUM.get(kind, 0) if m.group(1) is None else int(m.group(1)) * (1000 if m.group(2) else 1)
            count = num if num is not None else count
            if count < 2:
                raise ValueError(f"metric {name}: needs at least 2 samples, got {count}")
            return MetricSpec(name, kind, count)
    raise ValueError(f"unknown metric {name!r}; known: fid<N>[k]_full, kid<N>[k]_full, is<N>[k], "
                     "clip_score[<N>], r_precision[<N>], attribute_accuracy[<N>], diversity[<N>], "
                     "unprompted_coverage[<N>], pr<N>[k]3 "
                     "(e.g. fid10k_full, fid500_full, kid2k_full, is10k, pr2k3)")


def unavailable(reason: str, **extra: Any) -> dict:
    return {"value": None, "available": False, "reason": reason, **extra}


class EvalContext:
    """Everything one evaluation shares: conditions, generated-image features, reference stats.

    generate:  (Conditions rows: prompts + L2-normalised embeddings, seeds list[int])
               -> [B, 3, H, W] in [-1, 1]
    reference: ``ImageArchive`` (or None for attribute_accuracy alone)
    encoder:   TextImageEncoder for text conditions, CLIP score, R-precision (and the FID
               extractor when no Inception weights are given)
    """

    def __init__(self, generate: Generate, encoder: TextImageEncoder | None, reference=None, *,
                 inception: str | None = None, extractor: FeatureExtractor | None = None,
                 evaluator: AttributeEvaluator | None = None, seed: int = 0, batch: int = 32,
                 device: str | torch.device = "cpu") -> None:
        self.generate, self.encoder, self.reference = generate, encoder, reference
        self.inception, self._extractor, self.evaluator = inception, extractor, evaluator
        self.seed, self.batch, self.device = seed, batch, device
        self.want: set[str] = set()  # "features", "image_emb": what each generated batch feeds
        self._gen: dict[str, list[torch.Tensor]] = {}
        self._gen_count = 0
        self._real: dict[str, torch.Tensor] | None = None
        self._cond: tuple[torch.Tensor, list[str] | None, str] | None = None

    # -- extractor and reference -------------------------------------------------------------
    @property
    def extractor(self) -> FeatureExtractor:
        if self._extractor is None:
            self._extractor = resolve_extractor(self.inception, self.encoder, self.device)
        return self._extractor

    def _need_reference(self, what: str):
        if self.reference is None:
            raise ValueError(f"{what} needs a reference archive (--data REF.zip)")
        return self.reference

    def real_features(self) -> dict[str, torch.Tensor]:
        """Extractor outputs of every reference image (the "_full" in fid10k_full)."""
        if self._real is None:
            ref = self._need_reference("FID/KID")
            parts: dict[str, list[torch.Tensor]] = {}
            for i in range(0, len(ref), self.batch):
                out = self.extractor(ref.images(range(i, min(i + self.batch, len(ref)))))
                for k, v in out.items():
                    parts.setdefault(k, []).append(v)
            self._real = {k: torch.cat(v) for k, v in parts.items()}
        return self._real

    # -- conditions ----------------------------------------------------------------------------
    def _encoder_or_fail(self, what: str) -> TextImageEncoder:
        if self.encoder is None:
            raise ValueError(f"{what} needs an encoder (--encoder SPEC, or a snapshot that records one)")
        return self.encoder

    def conditions(self, n: int) -> tuple[torch.Tensor | None, list[str] | None, str]:
        """Conditions [n, D] for samples 0..n-1 (None without an encoder), their prompts (None
        without captions), source."""
        if self._cond is None or len(self._cond[1] or self._cond[0]) < n:
            from langfree.data.archive import captioned_indices

            ref = self._need_reference("conditions for generation")
            idx = [i % len(ref) for i in range(n)]
            captioned = captioned_indices(ref)
            with torch.no_grad():
                if captioned:  # a partly captioned archive: the captioned images' captions
                    from langfree.sampling.conditions import encode_texts

                    caps = [ref.captions(captioned[i % len(captioned)]) for i in range(n)]
                    prompts = [c[(i // len(captioned)) % len(c)] for i, c in enumerate(caps)]
                    cond = encode_texts(self.encoder, prompts) if self.encoder is not None else None
                    source = "captions" if len(captioned) == len(ref) else (
                        f"captions of the {len(captioned)} of {len(ref)} reference images that "
                        "have one")
                    self._cond = (cond, prompts, source)
                else:
                    encoder = self._encoder_or_fail("conditioning on reference images (the "
                                                    "archive has no captions)")
                    embs = [encoder.encode_image(ref.images(idx[i:i + self.batch]).float() / 127.5 - 1).float().cpu()
                            for i in range(0, n, self.batch)]
                    self._cond = (torch.cat(embs), None, "image_embeddings")
        cond, prompts, source = self._cond
        return (cond[:n] if cond is not None else None,
                (prompts[:n] if prompts is not None else None), source)

    def condition_rows(self, start: int, stop: int):
        """Conditions rows start..stop-1 (what ``generate`` receives)."""
        from langfree.sampling.conditions import Conditions

        cond, prompts, _ = self.conditions(stop)
        rows = prompts[start:stop] if prompts is not None else [None] * (stop - start)
        emb = cond[start:stop].to(self.device) if cond is not None else None
        return Conditions(prompts=list(rows), embeddings=emb)

    # -- generated samples ---------------------------------------------------------------------
    def generated(self, n: int) -> dict[str, torch.Tensor]:
        """Outputs (extractor features/logits, encoder image embeddings) of samples 0..n-1,
        generating only the ones not seen yet. Sample i: seed ``self.seed + i``."""
        if self._gen_count < n:
            for i in range(self._gen_count, n, self.batch):
                seeds = [self.seed + j for j in range(i, min(i + self.batch, n))]
                with torch.no_grad():
                    images = to_uint8(self.generate(self.condition_rows(i, i + len(seeds)), seeds))
                    if "features" in self.want:
                        for k, v in self.extractor(images).items():
                            self._gen.setdefault(k, []).append(v)
                    if "image_emb" in self.want:
                        emb = self.encoder.encode_image(images.float().to(self.device) / 127.5 - 1)
                        self._gen.setdefault("image_emb", []).append(emb.float().cpu())
            self._gen_count = n
        return {k: torch.cat(v)[:n] for k, v in self._gen.items()}

    def describe(self) -> dict:
        ex = self.extractor
        out = {"extractor": ex.name, "inception": ex.inception}
        if not ex.inception:
            out["note"] = ("FID/KID on the encoder's image embeddings, not Inception-v3: compare only "
                           "with runs using the same extractor; pass --inception PATH for Inception FID")
        return out


# -- metric functions: (ctx, spec) -> result dict ----------------------------------------------
def _distribution_common(ctx: EvalContext, spec: MetricSpec) -> dict:
    _, _, source = ctx.conditions(spec.num)
    return {**ctx.describe(), "num_gen": spec.num, "num_real": len(ctx.reference),
            "conditions": source, "seed": ctx.seed}


def metric_fid(ctx: EvalContext, spec: MetricSpec) -> dict:
    real = ctx.real_features()["features"]
    fake = ctx.generated(spec.num)["features"]
    return {"value": frechet_distance(real, fake), **_distribution_common(ctx, spec)}


def metric_kid(ctx: EvalContext, spec: MetricSpec) -> dict:
    real = ctx.real_features()["features"]
    fake = ctx.generated(spec.num)["features"]
    mean, std = kernel_distance(real, fake, seed=ctx.seed)
    return {"value": mean, "std": std, **_distribution_common(ctx, spec)}


def metric_is(ctx: EvalContext, spec: MetricSpec) -> dict:
    if not ctx.extractor.has_logits:
        return unavailable("Inception Score needs the Inception-v3 classifier: pass --inception PATH "
                           "(local 2015-12-05 weights); none given, and no download is attempted",
                           extractor=ctx.extractor.name, inception=False)
    logits = ctx.generated(spec.num)["logits"]
    mean, std = inception_score(logits, seed=ctx.seed)
    _, _, source = ctx.conditions(spec.num)
    return {"value": mean, "std": std, "extractor": ctx.extractor.name, "inception": True,
            "num_gen": spec.num, "conditions": source, "seed": ctx.seed}


def _prompts_or_reason(ctx: EvalContext, spec: MetricSpec) -> tuple[list[str] | None, str]:
    if ctx.encoder is None:
        return None, f"{spec.kind} needs an encoder"
    _, prompts, _ = ctx.conditions(spec.num)
    if prompts is None:
        return None, (f"{spec.kind} needs prompts: the reference archive {ctx.reference.path} "
                      f"has no captions (0 of {len(ctx.reference)} images)")
    return prompts, ""


def _encode_texts(encoder: TextImageEncoder, texts: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([encoder.encode_text(texts[i:i + 256]).float().cpu()
                          for i in range(0, len(texts), 256)])


def metric_clip_score(ctx: EvalContext, spec: MetricSpec) -> dict:
    """CLIPScore (Hessel et al. 2021) with w = 100 as torchmetrics' CLIPScore: 100 * max(cos, 0),
    averaged; the clip at 0 is part of the definition (a negative cosine scores 0, not < 0)."""
    prompts, reason = _prompts_or_reason(ctx, spec)
    if prompts is None:
        return unavailable(reason)
    image_emb = ctx.generated(spec.num)["image_emb"]
    text_emb, _, _ = ctx.conditions(spec.num)
    cos = torch.nn.functional.cosine_similarity(image_emb, text_emb, dim=1)
    _, _, source = ctx.conditions(spec.num)
    return {"value": float(100 * cos.clamp(min=0).mean()), "encoder": ctx.encoder.spec,
            "num_gen": spec.num, "definition": "100 * max(cos(image_emb, text_emb), 0), mean",
            "conditions": source, "seed": ctx.seed}


def metric_r_precision(ctx: EvalContext, spec: MetricSpec) -> dict:
    """For each generated image, score its own prompt against up to 99 other distinct prompts of
    the evaluated set (seeded choice); top-1 when the true prompt is strictly the most similar."""
    prompts, reason = _prompts_or_reason(ctx, spec)
    if prompts is None:
        return unavailable(reason)
    unique = sorted(set(prompts))
    if len(unique) < 2:
        return unavailable("r_precision needs at least 2 distinct prompts")
    image_emb = ctx.generated(spec.num)["image_emb"]
    table = _encode_texts(ctx.encoder, unique)  # (U, D)
    row = {t: r for r, t in enumerate(unique)}
    others = min(R_PRECISION_CANDIDATES - 1, len(unique) - 1)
    gen = torch.Generator().manual_seed(ctx.seed)
    hits = 0
    for i, p in enumerate(prompts):
        true = row[p]
        pick = torch.randperm(len(unique) - 1, generator=gen)[:others]
        pick = pick + (pick >= true).long()  # skip the true row: indices of the OTHER prompts
        sims = table[torch.cat([torch.tensor([true]), pick])] @ image_emb[i]  # (1 + others,)
        hits += int(bool((sims[0] > sims[1:]).all()))
    return {"value": hits / len(prompts), "candidates": 1 + others, "encoder": ctx.encoder.spec,
            "num_gen": spec.num, "seed": ctx.seed}


def metric_attribute_accuracy(ctx: EvalContext, spec: MetricSpec) -> dict:
    if ctx.evaluator is None:
        return unavailable("attribute_accuracy needs a shapes attribute evaluator "
                           "(--evaluator DIR, or a shapes reference archive to train one on)")
    encoder = ctx._encoder_or_fail("attribute_accuracy")
    return attribute_accuracy(ctx.generate, encoder, ctx.evaluator, n=spec.num, seed=ctx.seed,
                              batch=ctx.batch)


def _seed_groups(ctx: EvalContext, spec: MetricSpec) -> dict | str:
    """Samples of ``spec.num // 16`` canonical shapes prompts x seeds ``ctx.seed + 0..15`` and the
    reference images having each prompt's judged attributes; cached on ``ctx`` so diversity and
    unprompted_coverage of one call share them. Returns a reason string when unavailable."""
    from langfree.data.shapes import ATTRIBUTES
    from langfree.metrics.attributes import JUDGED, balanced_prompts

    cache = ctx.__dict__.setdefault("_seed_groups_cache", {})
    count = max(1, spec.num // SEEDS_PER_PROMPT)
    if count in cache:
        return cache[count]
    if ctx.encoder is None:
        return f"{spec.kind} needs an encoder to encode its prompts"
    ref = ctx._need_reference(spec.kind)
    ref_attrs = [ref.attributes(i) for i in range(len(ref))]
    if not all(ref_attrs):
        return (f"{spec.kind} needs a shapes reference archive with ground-truth attributes "
                "(langfree data shapes ...): real images with the prompt's attributes are its scale")
    by_combo: dict[tuple, list[int]] = {}
    for i, a in enumerate(ref_attrs):
        by_combo.setdefault(tuple(a[k] for k in JUDGED), []).append(i)
    prompts = balanced_prompts(count, ctx.seed, {k: list(ATTRIBUTES[k]) for k in JUDGED})
    seeds = [ctx.seed + s for s in range(SEEDS_PER_PROMPT)]
    texts = [p for p, _ in prompts]
    cond = _encode_texts(ctx.encoder, texts)                                     # [P, D]
    with torch.no_grad():  # prompts x seeds, ctx.batch rows per call (not one prompt per call)
        fakes = sample_grid(ctx.generate, Conditions(prompts=texts, embeddings=cond.to(ctx.device)),
                            seeds, ctx.batch)                                    # [P, S, 3, H, W]
    groups = []
    for (text, attrs), fake in zip(prompts, fakes):
        fake = to_uint8(fake)
        real_idx = by_combo.get(tuple(attrs[k] for k in JUDGED), [])[:SEEDS_PER_PROMPT]
        groups.append({"prompt": text, "fake": fake,
                       "real": ref.images(real_idx) if real_idx else None,
                       "real_attrs": [ref_attrs[i] for i in real_idx]})
    backgrounds = sorted({a["background"] for a in ref_attrs if "background" in a})
    cache[count] = {"groups": groups, "backgrounds": backgrounds, "seeds": seeds}
    return cache[count]


def _embed(ctx: EvalContext, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return ctx.encoder.encode_image(images.float().to(ctx.device) / 127.5 - 1).float().cpu()


def metric_diversity(ctx: EvalContext, spec: MetricSpec) -> dict:
    """Per prompt: mean pairwise |pixel difference| (in [0, 1]) of its 16 seeds over the same for
    the real images with its attributes; ``value`` is the mean ratio (1 = as varied as the data).
    ``embedding_value``: the same ratio with cosine distance of encoder image embeddings."""
    data = _seed_groups(ctx, spec)
    if isinstance(data, str):
        return unavailable(data)
    usable = [g for g in data["groups"] if g["real"] is not None and len(g["real"]) >= 2]
    if not usable:
        return unavailable("no prompt has two or more real reference images with its attributes; "
                           "use a larger shapes reference archive")
    pix = div.diversity_ratio([div.pairwise_pixel_distance(g["fake"]) for g in usable],
                              [div.pairwise_pixel_distance(g["real"]) for g in usable])
    emb = div.diversity_ratio([div.pairwise_embedding_distance(_embed(ctx, g["fake"])) for g in usable],
                              [div.pairwise_embedding_distance(_embed(ctx, g["real"])) for g in usable])
    return {"value": pix["value"], "metric": "mean |pixel difference| in [0, 1], pairs of seeds",
            "generated_distance": pix["generated_distance"], "real_distance": pix["real_distance"],
            "per_prompt": [round(r, 4) for r in pix["per_prompt"]],
            "embedding_value": emb["value"], "embedding_metric": "1 - cos(image embeddings)",
            "encoder": ctx.encoder.spec, "prompts": len(usable), "seeds": data["seeds"],
            "real_per_prompt": sum(len(g["real"]) for g in usable) / len(usable), "num": spec.num}


def metric_unprompted_coverage(ctx: EvalContext, spec: MetricSpec) -> dict:
    """Background colour (no prompt names it): share of the data's backgrounds among a prompt's
    16 seeds, mean over prompts. Background read from the border pixels (nearest palette colour);
    ``classifier_accuracy_real`` checks that reading on the reference images used, and
    ``real_value`` is the same coverage for those real images (at most 16 per prompt)."""
    from langfree.data.shapes import BACKGROUNDS_RGB

    data = _seed_groups(ctx, spec)
    if isinstance(data, str):
        return unavailable(data)
    values = data["backgrounds"]
    if not values:
        return unavailable("the reference archive records no background colours")
    fake_cov, real_cov, right, total = [], [], 0, 0
    for g in data["groups"]:
        fake_cov.append(div.coverage(div.classify_background(g["fake"], BACKGROUNDS_RGB), values))
        if g["real"] is not None:
            read = div.classify_background(g["real"], BACKGROUNDS_RGB)
            right += sum(r == a["background"] for r, a in zip(read, g["real_attrs"]))
            total += len(read)
            real_cov.append(div.coverage([a["background"] for a in g["real_attrs"]], values))
    return {"value": sum(fake_cov) / len(fake_cov), "attributes": ["background"],
            "data_values": values, "seeds": data["seeds"], "prompts": len(fake_cov),
            "real_value": sum(real_cov) / len(real_cov) if real_cov else None,
            "classifier": "median border colour, nearest palette entry",
            "classifier_accuracy_real": right / total if total else None, "num": spec.num}


def metric_pr(ctx: EvalContext, spec: MetricSpec) -> dict:
    """Improved precision/recall (k = 3) between ``num`` generated images (conditions as FID's)
    and the first ``num`` reference images, on the FID extractor's features."""
    real = ctx.real_features()["features"][:spec.num]
    fake = ctx.generated(spec.num)["features"]
    precision, recall = div.precision_recall(real, fake, PR_K)
    common = _distribution_common(ctx, spec)
    return {"value": precision, "precision": precision, "recall": recall, "k": PR_K,
            **common, "num_real": len(real)}


METRICS: dict[str, Callable[[EvalContext, MetricSpec], dict]] = {
    "fid": metric_fid, "kid": metric_kid, "is": metric_is, "clip_score": metric_clip_score,
    "r_precision": metric_r_precision, "attribute_accuracy": metric_attribute_accuracy,
    "diversity": metric_diversity, "unprompted_coverage": metric_unprompted_coverage,
    "pr": metric_pr,
}
_WANTS = {"fid": {"features"}, "kid": {"features"}, "is": {"features"}, "pr": {"features"},
          "clip_score": {"image_emb"}, "r_precision": {"image_emb"}}


def compute_metrics(names: list[str] | str, generate: Generate, encoder: TextImageEncoder | None,
                    ref_archive=None, *, inception: str | None = None,
                    extractor: FeatureExtractor | None = None,
                    evaluator: AttributeEvaluator | None = None, num: int | None = None,
                    seed: int = 0, batch: int = 32, device: str | torch.device = "cpu") -> dict[str, dict]:
    """Compute each named metric; returns ``{name: result}`` where every result has ``value``
    (None when unavailable, with ``reason``) and names what it measured with (extractor,
    encoder, conditions, seed, number of samples, seconds).

    ``ref_archive``: an ``ImageArchive`` or a path to one. ``extractor`` overrides the choice
    between Inception (``inception`` = local weights file) and the encoder's image tower."""
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    specs = [parse_metric(n.strip(), num) for n in names]
    if ref_archive is not None and not hasattr(ref_archive, "images"):
        from langfree.data.archive import ImageArchive
        ref_archive = ImageArchive(ref_archive)
    ctx = EvalContext(generate, encoder, ref_archive, inception=inception, extractor=extractor,
                      evaluator=evaluator, seed=seed, batch=batch, device=device)
    for spec in specs:
        ctx.want |= _WANTS.get(spec.kind, set())
    if "image_emb" in ctx.want and encoder is None:
        ctx.want.discard("image_emb")  # the metrics themselves report "needs an encoder"
    results: dict[str, dict] = {}
    for spec in specs:
        start = time.time()
        result = METRICS[spec.kind](ctx, spec)
        result["seconds"] = round(time.time() - start, 2)
        results[spec.name] = result
    return results
