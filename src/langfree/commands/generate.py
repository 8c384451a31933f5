"""``langfree generate SNAPSHOT --prompt TEXT ... --seeds 0-15 --outdir OUT``."""

from __future__ import annotations

from pathlib import Path

import typer


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def generate(
    snapshot: Path = typer.Argument(..., help="Snapshot directory, or a run directory (its latest snapshot)."),
    prompt: list[str] = typer.Option([], "--prompt", help="Text prompt (repeatable); one grid row each."),
    image: list[Path] = typer.Option([], "--image", help="Reference image for image variation (its CLIP image feature is the condition; repeatable)."),
    seeds: str = typer.Option("0-7", "--seeds", help="Seeds: 0-15 or 1,4,7-9; one grid column each."),
    truncation: float = typer.Option(1.0, "--truncation", help="Truncation ψ (1 = none)."),
    noise_mode: str = typer.Option("const", "--noise-mode", help="const | random (seeded) | none."),
    encoder: str | None = typer.Option(None, "--encoder", help="Encoder spec overriding the one recorded in the snapshot."),
    outdir: Path = typer.Option(Path("out"), "--outdir", help="Where PNGs and grid.png go."),
) -> None:
    """One PNG per prompt and seed plus grid.png (rows = prompts, columns = seeds)."""
    from langfree.checkpoint import SnapshotError, load_snapshot
    from langfree.encoders.clip import EncoderUnavailable
    from langfree.sampling.generate import (
        build_conditions,
        generate_grid,
        parse_seeds,
        write_outputs,
    )

    if noise_mode not in ("const", "random", "none"):
        _fail(f"--noise-mode {noise_mode!r}: use const, random or none")
    try:
        seed_list = parse_seeds(seeds)
        family = load_snapshot(snapshot, encoder=encoder or "auto")
        conditions = build_conditions(family.encoder, prompt, image)
        images = generate_grid(family, conditions, seed_list, truncation_psi=truncation,
                               noise_mode=noise_mode)
        written = write_outputs(images, conditions, seed_list, outdir)
    except (SnapshotError, EncoderUnavailable, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(f"wrote {len(written) - 1} images and {outdir / 'grid.png'}")


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
