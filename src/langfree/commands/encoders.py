"""CLI commands: ``langfree encoder train``, ``langfree encode``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from langfree.encoders import (
    SMALL_CLIP_BATCH,
    SMALL_CLIP_EMBED_DIM,
    SMALL_CLIP_LR,
    SMALL_CLIP_STEPS,
)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def encoder_train(
    archive: Annotated[Path, typer.Argument(help="Captioned archive (e.g. from 'langfree shapes').")],
    outdir: Annotated[Path, typer.Option("--outdir", help="Directory for encoder.json, encoder.safetensors, metrics.json.")],
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = SMALL_CLIP_STEPS,
    batch: Annotated[int, typer.Option(help="Image-caption pairs per step (contrastive batch).")] = SMALL_CLIP_BATCH,
    seed: Annotated[int, typer.Option(help="Seed for initialisation, batches, captions and the held-out split.")] = 0,
    embed_dim: Annotated[int, typer.Option("--embed-dim", help="Joint embedding size D.")] = SMALL_CLIP_EMBED_DIM,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate (cosine schedule, warm-up).")] = SMALL_CLIP_LR,
    holdout: Annotated[int, typer.Option(help="Images held out for the retrieval metrics.")] = 1000,
    eval_every: Annotated[int, typer.Option("--eval-every", help="Also print held-out retrieval every N steps (0: only at the end).")] = 0,
) -> None:
    """Train langfree's small CLIP on a captioned archive; prints its held-out retrieval metrics."""
    from langfree.data.archive import ArchiveError
    from langfree.encoders.small_clip import train_small_clip

    try:
        metrics = train_small_clip(archive, outdir, steps=steps, batch=batch, seed=seed,
                                   embed_dim=embed_dim, lr=lr, holdout=holdout, progress=True,
                                   eval_every=eval_every)
    except (ArchiveError, ValueError) as e:
        _fail(str(e))
    typer.echo(json.dumps(metrics, indent=1))
    typer.echo(f"encoder saved to {outdir} (use --encoder {outdir})")


def encode(
    archive: Annotated[Path, typer.Argument(help="Archive whose images and captions to embed.")],
    encoder: Annotated[str, typer.Option("--encoder", help="open_clip:MODEL/TAG, open_clip:MODEL@/path/weights, or an encoder directory.")],
    batch: Annotated[int, typer.Option("--batch", help="Images (and captions) per encoder call.")] = 256,
) -> None:
    """Precompute image and caption embeddings into a sidecar next to the archive (reused when present)."""
    from langfree.data.archive import ArchiveError
    from langfree.data.features import load_features
    from langfree.encoders import EncoderUnavailable, load_encoder

    try:
        features = load_features(archive, load_encoder(encoder), batch_size=batch, progress=True)
    except (ArchiveError, EncoderUnavailable, ValueError) as e:
        _fail(str(e))
    typer.echo(f"{features.path}: {len(features)} images, {features.caption_emb.shape[0]} captions, "
               f"D={features.embed_dim}, fingerprint {features.fingerprint}")


def register(app: typer.Typer, encoder_app: typer.Typer) -> None:
    encoder_app.command("train")(encoder_train)
    app.command("encode")(encode)
