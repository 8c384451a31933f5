"""DALL·E (Ramesh et al. 2021): BPE caption tokens (with BPE dropout) + VQGAN image tokens +
an autoregressive transformer with a KV cache, classifier-free guidance and CLIP reranking.

    langfree train vqgan --data shapes.zip --preset shapes32 --kimg 100 --outdir runs
    langfree train dalle --data shapes.zip --vqgan runs/00000-vqgan --preset shapes32 \
        --kimg 100 --outdir runs        # the BPE is trained on the captions (or --tokenizer)

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


def configure(data: dict, ctx: Any) -> dict:
    """Image vocabulary and grid from the VQGAN; text vocabulary from the tokenizer (trained on
    the archive's captions, cached beside it, when --tokenizer is not given)."""
    from langfree.families.dalle.bpe import CaptionTokenizer
    from langfree.families.dalle.family import tokenizer_for_archive

    # configure runs before the flags are applied: read --vqgan / --tokenizer from the request
    given = {k: v for k, v in ctx.request.family_options.items() if v is not None}
    data.update({k: given[k] for k in ("vqgan", "tokenizer") if k in given})
    data["image_vocab"], data["image_grid"] = vqgan_geometry(data.get("vqgan"))
    if not data.get("tokenizer"):
        data["tokenizer"] = str(tokenizer_for_archive(ctx.archive.path, data["text_vocab"]))
    data["text_vocab"] = CaptionTokenizer.from_file(data["tokenizer"]).vocab_size
    return data


def prepare(family: Any, ctx: Any) -> None:
    """Load the tokenizer (becomes the snapshot asset) and the VQGAN (a reference)."""
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
    encoder="optional",  # training needs none; reranking at sampling time does
    commands={"tokenizer train": "langfree.families.dalle.commands:tokenizer_train"},
)

__all__ = ["SPEC"]
