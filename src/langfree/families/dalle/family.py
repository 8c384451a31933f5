"""The DALL·E family on the one training loop (docs/ENGINE_V2.md).

Stages: tokenizer (``bpe.train_tokenizer``; or one trained on the archive's captions by
``configure``) → VQGAN (``langfree train vqgan`` or a converted taming checkpoint) →
transformer (this family). Data: ``caption`` (BPE-encoded per step with dropout, so every epoch
sees new segmentations) and an ``image_codes`` sidecar of K augmented code sets per image
(augment.py says why K sets and not on-the-fly encoding). One phase, ``main``: (CE_text +
7·CE_image)/8 with 10 % caption dropout to the null text, AdamW, warm-up + cosine, clip 1.

Frozen parts: the VQGAN is a reference (spec + digest); the tokenizer travels as the asset
``tokenizer.json``. Sampling: ``conditions.prompts`` → BPE ids (no dropout) → cached
autoregressive codes (sampler.py) → VQGAN decode; with ``rerank`` N > 1, N candidates per
prompt scored by the encoder.

Language-free (``condition="clip"``, config.py): data ``image_emb`` (the engine's features
sidecar, as LAFITE) + ``image_codes``, no captions and no tokenizer; the loss conditions on
LAFITE-G pseudo text features of the image embedding (loss.clip_condition) and is CE_image
only. Sampling reads ``conditions.embeddings`` (the prompt's text embedding, or a reference
image's image embedding); the null row for guidance is the zero embedding.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from langfree.families.base import (
    EMA,
    LossOutput,
    LRSchedule,
    Phase,
    Progress,
    Reference,
    adam,
)
from langfree.families.dalle import sampler as S
from langfree.families.dalle.augment import augmented_views
from langfree.families.dalle.bpe import CaptionTokenizer
from langfree.families.dalle.config import DalleConfig, DalleSampleOptions
from langfree.families.dalle.loss import clip_condition, dalle_loss, training_text
from langfree.families.dalle.transformer import DalleTransformer
from langfree.families.vqgan.family import VQGAN_HINT, load_vqgan

SAMPLE_BATCH = 16  # rows per sampling batch (guidance doubles it)
TOKENIZER_ASSET = "tokenizer.json"


class DalleFamily:
    name = "dalle"
    Config = DalleConfig
    SampleOptions = DalleSampleOptions

    def __init__(self, config: DalleConfig, encoder: Any = None):
        self.config, self.encoder = config, encoder
        self.transformer = DalleTransformer(config)
        self.transformer_ema = copy.deepcopy(self.transformer).eval().requires_grad_(False)
        self.tokenizer: CaptionTokenizer | None = None  # an asset: load_assets / load_tokenizer
        self.vqgan: nn.Module | None = None  # a reference: load_references / load_vqgan
        self._vqgan_spec: str | None = None
        self._vqgan_digest: str | None = None
        self._optimizers: dict[str, torch.optim.Optimizer] | None = None

    # ------------------------------------------------------------------ frozen parts
    def load_tokenizer(self, data: bytes) -> CaptionTokenizer:
        tok = CaptionTokenizer(data)
        if tok.vocab_size != self.config.text_vocab:
            raise ValueError(f"the tokenizer has {tok.vocab_size} tokens, the model was built "
                             f"for {self.config.text_vocab}; pass the tokenizer it was trained "
                             "with (or --set text_vocab=...)")
        self.tokenizer = tok
        return tok

    def assets(self) -> dict[str, bytes]:
        return {TOKENIZER_ASSET: self.tokenizer.to_bytes()} if self.tokenizer else {}

    def load_assets(self, assets: dict[str, bytes]) -> None:
        if TOKENIZER_ASSET in assets:
            self.load_tokenizer(assets[TOKENIZER_ASSET])

    def load_vqgan(self, spec: str | None = None, device: str | torch.device = "cpu") -> nn.Module:
        spec = spec or self.config.vqgan
        vq = load_vqgan(spec, device)
        c = vq.config
        if (c.n_embed, vq.grid) != (self.config.image_vocab, self.config.image_grid):
            raise ValueError(f"VQGAN {spec} has {c.n_embed} codes on a {vq.grid}² grid, the "
                             f"model expects {self.config.image_vocab} on "
                             f"{self.config.image_grid}²; pass the VQGAN it was built for")
        self.vqgan, self._vqgan_spec, self._vqgan_digest = vq, str(spec), None
        return vq

    def load_references(self, specs: dict[str, str]) -> None:
        if "vqgan" in specs:
            self.load_vqgan(specs["vqgan"])

    def _require_vqgan(self) -> nn.Module:
        if self.vqgan is None:
            raise ValueError(f"the DALL·E model has no VQGAN loaded: {VQGAN_HINT}")
        return self.vqgan

    def _require(self) -> tuple[CaptionTokenizer | None, nn.Module]:
        """(tokenizer — None in clip mode, which has none —, VQGAN), or a ValueError."""
        if self.tokenizer is None and self.config.condition == "text":
            raise ValueError("the DALL·E model has no tokenizer loaded: pass --tokenizer "
                             "tokenizer.json or a snapshot that carries one")
        return self.tokenizer, self._require_vqgan()

    def vqgan_digest(self) -> str:
        from langfree.data.sidecar import tensor_digest

        if self._vqgan_digest is None:
            self._vqgan_digest = tensor_digest(self._require_vqgan())
        return self._vqgan_digest

    def references(self) -> dict[str, Reference]:
        if self.vqgan is None:
            return {}
        return {"vqgan": Reference(spec=self._vqgan_spec, digest=self.vqgan_digest())}

    def producers(self) -> dict[str, Any]:
        from langfree.data.sidecar import Producer

        vq, k = self._require_vqgan(), self.config.augment_sets

        def encode(images: torch.Tensor) -> dict[str, torch.Tensor]:
            device = next(vq.parameters()).device
            views = augmented_views(images, vq.config.resolution, k)  # (B, K, 3, R, R)
            codes = vq.encode(views.flatten(0, 1).to(device))  # (B*K, N)
            return {"image_codes": codes.view(len(images), views.shape[1], -1)}

        return {"image_codes": Producer(kind="image_codes", encode=encode, batch_size=32,
                                        fingerprint=f"{self.vqgan_digest()}k{k}")}

    def need_hint(self, need: str) -> str:
        return VQGAN_HINT

    # ------------------------------------------------------------------ structure
    @property
    def needs(self) -> frozenset[str]:
        if self.config.condition == "clip":  # language-free: the encoder's image features only
            return frozenset({"image_emb", "image_codes"})
        return frozenset({"captions", "image_codes"})

    def modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"transformer": self.transformer,
                                      "transformer_ema": self.transformer_ema}
        if self.vqgan is not None:
            mods["vqgan"] = self.vqgan
        return mods

    def snapshot_modules(self) -> tuple[str, ...]:
        return ("transformer_ema",)

    def ema_pairs(self) -> list[tuple[str, str]]:
        return [("transformer", "transformer_ema")]

    def default_ema(self, batch: int) -> EMA:
        return EMA(decay=self.config.ema_decay, rampup=self.config.ema_rampup)

    def lr_schedule(self) -> LRSchedule:
        return LRSchedule(warmup_kimg=self.config.warmup_kimg, kind="cosine",
                          min_scale=self.config.lr_min_ratio)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        if self._optimizers is None:
            cfg = self.config
            # weight decay on matrices only (GPT-2 / nanoGPT): not on biases, norms, embeddings
            decay, rest = [], []
            for name, p in self.transformer.named_parameters():
                (decay if p.dim() >= 2 and "emb" not in name and "image_row" not in name
                 and "image_col" not in name and "text_pos" not in name else rest).append(p)
            self._optimizers = {"main": adam(
                [{"params": decay, "weight_decay": cfg.weight_decay},
                 {"params": rest, "weight_decay": 0.0}], cfg.lr, cfg.betas)}
        return self._optimizers

    def phases(self) -> list[Phase]:
        return [Phase("main", ("transformer",), "main", clip_grad_norm=self.config.grad_clip)]

    # ------------------------------------------------------------------ training
    def codes(self, batch: dict[str, Any]) -> torch.Tensor:
        """One of the K augmented code sets per sample (loop RNG): [B, N] int64."""
        sets = batch["image_codes"]  # (B, K, N), float from the sidecar (exact below 2**24)
        want = self.config.image_tokens
        if sets.ndim != 3 or sets.shape[2] != want:
            raise ValueError(f"image_codes are {list(sets.shape[1:])} per image, the model "
                             f"expects [K, {want}]; use the VQGAN the model was built for")
        pick = torch.randint(0, sets.shape[1], (sets.shape[0],), device=sets.device)
        return sets[torch.arange(sets.shape[0], device=sets.device), pick].long()

    def loss(self, phase: Phase, nets: dict[str, nn.Module], batch: dict[str, Any],
             progress: Progress) -> LossOutput:
        if phase.name != "main":
            raise ValueError(f"DALL·E has no phase {phase.name!r}")
        codes = self.codes(batch)
        if self.config.condition == "clip":
            cond = clip_condition(batch["image_emb"].to(codes.device), self.config)  # (B, D)
        else:
            if self.tokenizer is None:
                self._require()
            cond = training_text(self.tokenizer, list(batch["caption"]), self.config,
                                 codes.device)  # (B, L)
        loss, stats = dalle_loss(nets["transformer"], cond, codes, self.config.image_loss_weight)
        return LossOutput(loss, stats)

    # ------------------------------------------------------------------ sampling
    def prefix_conditions(self, conditions: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditions -> (one prefix condition per row, the null condition): text mode BPE ids
        [B, L] (no dropout) and the all-pad null text [L]; clip mode the rows' embeddings
        [B, D] and the zero embedding [D]."""
        if self.config.condition == "clip":
            emb = conditions.require_embeddings("DALL·E (condition clip)").float()
            if emb.shape[1] != self.config.clip_dim:
                raise ValueError(f"the embeddings are {emb.shape[1]}-d, the model was trained on "
                                 f"{self.config.clip_dim}-d ones: use the encoder it was trained "
                                 "with")
            return emb, torch.zeros(emb.shape[1])
        tok = self._require()[0]
        L = self.config.text_len
        return tok.encode(conditions.require_prompts("DALL·E"), L), tok.encode([""], L)[0]

    @torch.no_grad()
    def sample_codes(self, cond: torch.Tensor, null: torch.Tensor, seeds: list[int],
                     options: DalleSampleOptions | None = None) -> torch.Tensor:
        """Prefix conditions [B, ...] (``prefix_conditions``) + one seed each -> codes [B, N]
        from the EMA transformer."""
        net = self.transformer_ema
        device = next(net.parameters()).device
        was = net.training
        net.eval()
        cond, null = cond.to(device), null.to(device)
        out = [S.sample_codes(net, cond[i:i + SAMPLE_BATCH], null, seeds[i:i + SAMPLE_BATCH],
                              options) for i in range(0, len(seeds), SAMPLE_BATCH)]
        net.train(was)
        return torch.cat(out)

    @torch.no_grad()
    def sample(self, conditions: Any, seeds: list[int],
               options: DalleSampleOptions | None = None) -> torch.Tensor:
        """Conditions (text mode: ``prompts``; clip mode: ``embeddings``) + one seed each ->
        [B, 3, H, W] in [-1, 1]; with rerank N the best of N candidates (seeds
        ``candidate_seed(seed, c)``) by encoder similarity."""
        options = options or DalleSampleOptions()
        if len(seeds) != len(conditions):
            raise ValueError(f"{len(seeds)} seeds for {len(conditions)} rows: one seed per row")
        vq = self._require()[1]
        cond, null = self.prefix_conditions(conditions)
        n = options.rerank
        if n > 1 and self.encoder is None:
            raise ValueError("rerank > 1 scores candidates with the encoder, but none is loaded: "
                             "pass --encoder SPEC or rerank=1")
        cand = [S.candidate_seed(int(s), c) for s in seeds for c in range(n)]
        codes = self.sample_codes(cond.repeat_interleave(n, 0), null, cand, options)
        device = next(vq.parameters()).device
        # one image per decode: conv kernels pick their blocking by batch size, so a batched
        # decode would make pixels differ (~1e-6) with the batch an image happens to be in
        images = torch.cat([vq.decode_codes(c[None].to(device)).clamp(-1, 1) for c in codes])
        if n == 1:
            return images
        emb = getattr(conditions, "embeddings", None)
        if emb is None:
            emb = self.encoder.encode_text(conditions.require_prompts("DALL·E"))
        best = S.rerank(self.encoder, images, emb, n)  # (B,)
        B = len(conditions)
        return images.view(B, n, *images.shape[1:])[torch.arange(B), best]


def tokenizer_for_archive(archive_path: str | Path, vocab: int) -> Path:
    """The BPE of an archive's captions, trained once and cached beside it as
    ``DATA.tokenizer-v<vocab>-<digest>.json`` (the digest of the archive: a changed archive
    trains a new one)."""
    from langfree.data.sidecar import archive_digest
    from langfree.families.dalle.bpe import train_tokenizer

    archive_path = Path(archive_path)
    dest = archive_path.with_name(
        f"{archive_path.stem}.tokenizer-v{vocab}-{archive_digest(archive_path)}.json")
    return dest if dest.is_file() else train_tokenizer(archive_path, vocab, dest)
