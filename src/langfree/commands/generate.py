"""``langfree generate SNAPSHOT --prompt TEXT ... --seeds 0-15 [--sample key=value] --outdir OUT``
and ``langfree generate --from-png IMAGE.png`` (the same image again, from its parameters)."""

from __future__ import annotations

from pathlib import Path

import typer


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def generate(
    snapshot: Path | None = typer.Argument(None, help="Snapshot directory, or a run directory (its latest snapshot). Optional with --from-png."),
    prompt: list[str] = typer.Option([], "--prompt", help="Text prompt (repeatable); one grid row each."),
    image: list[Path] = typer.Option([], "--image", help="Reference image for image variation (its CLIP image feature is the condition; repeatable)."),
    negative_prompt: str | None = typer.Option(None, "--negative-prompt", help="Negative prompt, for families whose guidance uses one."),
    seeds: str = typer.Option("0-7", "--seeds", help="Seeds: 0-15 or 1,4,7-9; one grid column each."),
    sample: list[str] = typer.Option([], "--sample", help="Sampling option of the family: --sample key=value (repeatable; see the family's SampleOptions)."),
    from_png: Path | None = typer.Option(None, "--from-png", help="A PNG langfree wrote: regenerate it from its 'parameters' chunk (prompt, seed, snapshot, options); --sample / --seeds / SNAPSHOT override."),
    encoder: str | None = typer.Option(None, "--encoder", help="Encoder spec overriding the one recorded in the snapshot."),
    outdir: Path = typer.Option(Path("out"), "--outdir", help="Where PNGs and grid.png go."),
) -> None:
    """One PNG per prompt and seed plus grid.png (rows = prompts, columns = seeds)."""
    from langfree.checkpoint import SnapshotError, load_snapshot, resolve_snapshot
    from langfree.config import ConfigError
    from langfree.encoders.clip import EncoderUnavailable
    from langfree.sampling.conditions import build_conditions, parse_sample_options
    from langfree.sampling.generate import (
        generate_grid,
        parse_seeds,
        read_parameters,
        write_outputs,
    )

    try:
        options_in: list[str] | dict = list(sample)
        if from_png is not None:
            params = read_parameters(from_png)
            snapshot = snapshot or Path(params.snapshot)
            prompt = prompt or ([params.prompt] if params.prompt is not None else [])
            negative_prompt = negative_prompt or params.negative_prompt
            if seeds == "0-7":  # the default: take the PNG's seed
                seeds = str(params.seed)
            options_in = [f"{k}={_json(v)}" for k, v in params.options.items()] + list(sample)
        if snapshot is None:
            _fail("pass a SNAPSHOT (or --from-png FILE)")
        empty = [i + 1 for i, text in enumerate(prompt) if not text.strip()]
        if empty:
            _fail(f"--prompt {prompt[empty[0] - 1]!r} (prompt {empty[0]}) is empty; give the text "
                  "to draw, or --image FILE for a variation of a picture")
        seed_list = parse_seeds(seeds)
        path = resolve_snapshot(snapshot)
        family = load_snapshot(path, encoder=encoder or "auto")
        options = parse_sample_options(family, options_in)
        conditions = build_conditions(family.encoder, prompt, image, negative_prompt)
        images = generate_grid(family, conditions, seed_list, options)
        written = write_outputs(images, conditions, seed_list, outdir, family=family.name,
                                snapshot=str(path), options=options)
    except (SnapshotError, EncoderUnavailable, ConfigError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    except OSError as exc:  # full disk, read-only --outdir: write_outputs removed its files
        _fail(f"cannot write {exc.filename or outdir}: {exc.strerror or exc}; no images were "
              f"written to {outdir} (free space, or choose another --outdir)")
    typer.echo(f"wrote {len(written) - 1} images and {outdir / 'grid.png'}")


def _json(value) -> str:
    import json

    return json.dumps(value)


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
