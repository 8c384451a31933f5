"""DALL·E (Ramesh et al. 2021): BPE caption tokens (with BPE dropout) + VQGAN image tokens +
an autoregressive transformer with a KV cache, classifier-free guidance and CLIP reranking.

    langfree train vqgan --data shapes.zip --preset shapes32 --kimg 100 --outdir runs
    langfree train dalle --data shapes.zip --vqgan runs/00000-vqgan --preset shapes32 \
        --kimg 100 --outdir runs        # the BPE is trained on the captions (or --tokenizer)
    langfree train dalle --data images.zip --vqgan runs/00000-vqgan --preset shapes32 \
        --condition clip --encoder runs/clip --kimg 100 --outdir runs   # language-free

Light on purpose (no torch at import): the CLI reads SPEC to build ``--help``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from langfree.families.spec import Flag, TrainSpec


def vqgan_geometry(spec: str | None) -> tuple[int, int]:
    """(codebook size, tokens per side) of a VQGAN run/snapshot, read from its config.json."""
    from langfree.checkpoint import resolve_snapshot

    if not spec:
        raise ValueError("DALL·E needs a VQGAN: pass --vqgan RUN (`langfree train vqgan` or "
                         "`langfree convert taming-ckpt IN.ckpt OUT`)")
    cfg = json.loads((resolve_snapshot(spec) / "config.json").read_text())
    if cfg.get("family") != "vqgan":
        raise ValueError(f"--vqgan {spec} is a {cfg.get('family')} snapshot, not a VQGAN")
    c = cfg["config"]
    return int(c["n_embed"]), int(c["resolution"]) // 2 ** (len(c["ch_mult"]) - 1)


def _given(request: Any, keys: tuple[str, ...]) -> dict:
    """--flag values and --set key=value overrides of ``keys``: the engine applies both after
    ``configure``, so the hook reads them from the request itself."""
    given = {k: v for k, v in (getattr(request, "family_options", None) or {}).items()
             if k in keys and v is not None}
    for text in getattr(request, "overrides", None) or []:
        key, _, value = text.partition("=")
        if key.strip() in keys:
            given[key.strip()] = value.strip().strip('"')
    return given


def configure(data: dict, ctx: Any) -> dict:
    """Image vocabulary and grid from the VQGAN; text mode: text vocabulary from the tokenizer
    (trained on the archive's captions, cached beside it, when --tokenizer is not given);
    clip mode: the embedding width from the encoder (no tokenizer)."""
    from langfree.families.dalle.bpe import CaptionTokenizer
    from langfree.families.dalle.family import tokenizer_for_archive

    data.update(_given(ctx.request, ("vqgan", "tokenizer", "condition")))
    data["image_vocab"], data["image_grid"] = vqgan_geometry(data.get("vqgan"))
    if data.get("condition") == "clip":
        if ctx.encoder is None:
            raise ValueError("--condition clip conditions on CLIP embeddings: pass --encoder "
                             "SPEC (open_clip:ViT-B-32@/path/weights, or a directory from "
                             "`langfree encoder train CAPTIONED.zip --outdir DIR`)")
        data["clip_dim"], data["tokenizer"] = int(ctx.encoder.embed_dim), None
        return data
    if not data.get("tokenizer") and not any(ctx.archive.captions(i)
                                             for i in range(len(ctx.archive))):
        raise ValueError(f"DALL·E with text tokens trains on captions, but {ctx.archive.path} "
                         "has none: train language-free with --condition clip --encoder SPEC, "
                         "or build the archive from images with X.txt captions")
    if not data.get("tokenizer"):
        data["tokenizer"] = str(tokenizer_for_archive(ctx.archive.path, data["text_vocab"]))
    data["text_vocab"] = CaptionTokenizer.from_file(data["tokenizer"]).vocab_size
    return data


def prepare(family: Any, ctx: Any) -> None:
    """Load the tokenizer (text mode; becomes the snapshot asset) and the VQGAN (a reference)."""
    if family.config.condition == "text":
        if not family.config.tokenizer:
            raise ValueError("DALL·E with text tokens needs a tokenizer: pass --tokenizer "
                             "tokenizer.json (or let it train on a captioned archive)")
        family.load_tokenizer(Path(family.config.tokenizer).read_bytes())
    family.load_vqgan(family.config.vqgan)


SPEC = TrainSpec(
    name="dalle",
    family="langfree.families.dalle.family:DalleFamily",
    config="langfree.families.dalle.config:DalleConfig",
    presets="langfree.families.dalle.config:PRESETS",
    help="DALL·E: BPE text tokens + VQGAN image tokens, causal transformer over [BOS, text, "
         "image]; sampling with a KV cache, top-k, guidance and CLIP reranking.",
    flags=(
        Flag(("--vqgan",), "vqgan", str,
             "VQGAN: a `langfree train vqgan` run/snapshot or a converted taming checkpoint."),
        Flag(("--tokenizer",), "tokenizer", str,
             "tokenizer.json (HF BPE); default: trained on the archive's captions."),
        Flag(("--condition",), "condition", str,
             "text: BPE caption tokens; clip: language-free CLIP-embedding prefix (needs "
             "--encoder, no captions)."),
        Flag(("--prefix-tokens",), "prefix_tokens", int,
             "clip mode: prefix tokens projected from the embedding."),
        Flag(("--clip-noise",), "clip_noise", float,
             "clip mode: LAFITE-G ξ, h̃ = normalize(î + ξ·ε̂) (official 3; 0 = none)."),
        Flag(("--bpe-dropout",), "bpe_dropout", float, "BPE dropout while training (paper 0.1)."),
        Flag(("--text-len",), "text_len", int, "Text positions (paper 256)."),
        Flag(("--null-cond-prob",), "null_cond_prob", float,
             "P(caption replaced by the null text) for classifier-free guidance."),
        Flag(("--augment-sets",), "augment_sets", int,
             "Augmented code sets per image in the sidecar (paper crop; 0 = none)."),
        Flag(("--lr",), "lr", float, "AdamW learning rate."),
    ),
    configure=configure,
    prepare=prepare,
    encoder="optional",  # text mode trains without one; clip mode and reranking need one
    commands={"tokenizer train": "langfree.families.dalle.commands:tokenizer_train"},
)

__all__ = ["SPEC"]
