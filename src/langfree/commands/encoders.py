"""CLI commands: ``langfree encoder train``, ``langfree encode``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from langfree.encoders.small_clip import (
    DEFAULT_BATCH, DEFAULT_EMBED_DIM, DEFAULT_LR, DEFAULT_STEPS,
)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def encoder_train(
    archive: Path = typer.Argument(..., help="Captioned archive (e.g. from 'langfree shapes')."),
    outdir: Path = typer.Option(..., "--outdir", help="Directory for encoder.json, encoder.safetensors, metrics.json."),
    steps: int = typer.Option(DEFAULT_STEPS, help="Optimiser steps."),
    batch: int = typer.Option(DEFAULT_BATCH, help="Image-caption pairs per step (contrastive batch)."),
    seed: int = typer.Option(0, help="Seed for initialisation, batches, captions and the held-out split."),
    embed_dim: int = typer.Option(DEFAULT_EMBED_DIM, "--embed-dim", help="Joint embedding size D."),
    lr: float = typer.Option(DEFAULT_LR, help="Peak AdamW learning rate (cosine schedule, warm-up)."),
    holdout: int = typer.Option(1000, help="Images held out for the retrieval metrics."),
    eval_every: int = typer.Option(0, "--eval-every", help="Also print held-out retrieval every N steps (0: only at the end)."),
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
    archive: Path = typer.Argument(..., help="Archive whose images and captions to embed."),
    encoder: str = typer.Option(..., "--encoder", help="open_clip:MODEL/TAG, open_clip:MODEL@/path/weights, or an encoder directory."),
    batch: int = typer.Option(256, "--batch", help="Images (and captions) per encoder call."),
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
