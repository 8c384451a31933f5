"""Data commands: ``langfree shapes`` (embedded toy data) and ``langfree dataset`` (dataset tool)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer


def _progress():
    """A progress bar on stderr, gone when done, so stdout holds only the summary."""
    from rich.console import Console
    from rich.progress import Progress

    return Progress(transient=True, console=Console(stderr=True))


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _check_dest(dest: Path, force: bool) -> None:
    """DEST must be a .zip; an existing one is replaced only with --force (the new archive is
    renamed onto it once complete, so a failure keeps the old one)."""
    if dest.suffix.lower() != ".zip":
        raise typer.BadParameter(f"{dest} must end in .zip", param_hint="DEST")
    if dest.exists() and not force:
        _fail(f"{dest} already exists; pass --force to replace it, or choose another DEST")


def write_fault(dest: Path, exc: OSError) -> str:
    """One line for a failed write (full disk, read-only or missing folder): the path and the
    fault; the atomic writers have removed their temp files, so nothing half-written is left."""
    path = exc.filename or dest
    return (f"cannot write {path}: {exc.strerror or exc}; nothing was written to {dest} "
            "(free space, fix the permissions, or choose another destination)")


def shapes(
    dest: Annotated[Path, typer.Argument(help="Archive to write, e.g. shapes32.zip.")],
    count: Annotated[int, typer.Option("--count", "-n", min=1, help="Number of images.")] = 10000,
    resolution: Annotated[int, typer.Option("--resolution", "-r", min=8,
                                            help="Image side in pixels.")] = 32,
    seed: Annotated[int, typer.Option(min=0, help="Data seed; distinct seeds give distinct images.")] = 0,
    second_object_prob: Annotated[float, typer.Option(
        "--second-object-prob", min=0.0, max=1.0,
        help="Probability that an image also shows a second, smaller object.")] = 0.0,
    force: Annotated[bool, typer.Option("--force", help="Replace DEST if it exists.")] = False,
) -> None:
    """Draw the captioned Shapes data set (one object, colour, size, position) into an archive."""
    from langfree.data.shapes import write_shapes
    from langfree.data.tool import DatasetError, check_resolution

    _check_dest(dest, force)
    try:
        check_resolution(resolution)
        with _progress() as bar:
            task = bar.add_task(f"drawing {count} images", total=count)
            write_shapes(dest, count, resolution, seed, second_object_prob,
                         progress=lambda n: bar.advance(task, n))
    except DatasetError as e:
        _fail(str(e))
    except OSError as e:
        _fail(write_fault(dest, e))
    typer.echo(f"wrote {count} images at {resolution}x{resolution} to {dest}")


def dataset(
    src: Annotated[Path, typer.Argument(
        help="A folder of images (captions as X.txt beside X.jpg), a zip of one, or a COCO root "
             "(train2014/ + annotations/captions_train2014.json).")],
    dest: Annotated[Path, typer.Argument(help="Archive to write, e.g. coco64.zip.")],
    resolution: Annotated[int, typer.Option("--resolution", "-r", min=4, help="Output side in pixels.")],
    transform: Annotated[str, typer.Option(
        help="center-crop (square from the middle), center-crop-wide (2:1 strip, padded) or "
             "stretch.")] = "center-crop",
    max_images: Annotated[int | None, typer.Option(min=1, help="Stop after this many images.")] = None,
    min_size: Annotated[int | None, typer.Option(
        min=1, help="Skip images whose shorter side is below this (default: upscale them).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Decoding processes.")] = min(2, os.cpu_count() or 1),
    force: Annotated[bool, typer.Option("--force", help="Replace DEST if it exists.")] = False,
) -> None:
    """Convert images (+ optional captions) into a training archive; reports every skipped file."""
    from langfree.data.images import TRANSFORMS
    from langfree.data.tool import DatasetError, build_dataset

    _check_dest(dest, force)
    if transform not in TRANSFORMS:
        raise typer.BadParameter(f"{transform!r}; choose one of {', '.join(TRANSFORMS)}",
                                 param_hint="--transform")
    try:
        with _progress() as bar:
            task = bar.add_task("converting", total=None)
            report = build_dataset(src, dest, resolution, transform, max_images, min_size, workers,
                                   progress=lambda done, total: bar.update(task, completed=done, total=total))
    except DatasetError as e:
        _fail(str(e))
    except OSError as e:
        _fail(write_fault(dest, e))
    typer.echo(report.summary())


def register(app: typer.Typer) -> None:
    app.command("shapes")(shapes)
    app.command("dataset")(dataset)
