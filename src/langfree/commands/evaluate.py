"""``langfree eval``: named metrics of a snapshot against a reference archive."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def evaluate(
    snapshot: Annotated[Path, typer.Argument(help="Snapshot directory, or a run directory (its latest snapshot).")],
    metrics: Annotated[str, typer.Option("--metrics", help="Comma-separated names: fid10k_full, kid10k_full, "
                                         "is10k, clip_score, r_precision, attribute_accuracy, fid500_full, ...")],
    data: Annotated[Path, typer.Option("--data", help="Reference archive (.zip); its captions condition generation.")],
    inception: Annotated[Path | None, typer.Option("--inception", help="Local Inception-v3 2015-12-05 weights "
                                                   "(.pth state dict). Without it FID/KID use the encoder's image "
                                                   "tower (named in the output) and IS is unavailable.")] = None,
    num: Annotated[int | None, typer.Option("--num", min=2, help="Override the sample count in every name.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Sample i uses seed + i.")] = 0,
    encoder: Annotated[str | None, typer.Option("--encoder", help="Encoder spec overriding the snapshot's.")] = None,
    evaluator: Annotated[Path | None, typer.Option("--evaluator", help="Attribute evaluator dir (default: "
                                                   "<data>.attribute-evaluator beside the archive, trained "
                                                   "once).")] = None,
    batch: Annotated[int | None, typer.Option("--batch", min=1, help="Images per generation / feature batch "
                                              "(default: the family's, e.g. MaskDiT 64, else 32).")] = None,
    no_write: Annotated[bool, typer.Option("--no-write", help="Print only; do not append to metrics.jsonl.")] = False,
    sample: Annotated[list[str] | None, typer.Option("--sample", help="Sampling option of the family: "
                                                     "--sample key=value (repeatable); recorded in each result.")] = None,
    snapshots: Annotated[str | None, typer.Option("--snapshots", help="FIRST:LAST kimg (inclusive, either may "
                                                  "be empty): evaluate every snapshot of the run dir in the "
                                                  "range and print a table with the best.")] = None,
) -> None:
    """Compute metrics; prints JSON and appends one line per metric to the run's metrics.jsonl."""
    from langfree.checkpoint import SnapshotError
    from langfree.data.archive import ArchiveError
    from langfree.encoders.clip import EncoderUnavailable
    from langfree.metrics.extractors import ExtractorUnavailable
    from langfree.metrics.snapshot import evaluate_snapshot, snapshots_in_range

    try:
        paths = snapshots_in_range(snapshot, snapshots) if snapshots else [snapshot]
        reports = []
        for path in paths:
            report = evaluate_snapshot(path, metrics, data, encoder=encoder or "auto",
                                       inception=str(inception) if inception else None,
                                       evaluator=str(evaluator) if evaluator else None, num=num,
                                       seed=seed, batch=batch, write=not no_write,
                                       sample=list(sample or []),
                                       log=lambda m: typer.echo(m, err=True))
            report.pop("rows")
            reports.append(report)
    except (SnapshotError, ArchiveError, EncoderUnavailable, ExtractorUnavailable,
            FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    if snapshots:
        _table(reports)
        json.dump({"snapshots": reports}, sys.stdout, indent=1)
    else:
        json.dump(reports[0], sys.stdout, indent=1)
    sys.stdout.write("\n")


def _table(reports: list[dict]) -> None:
    """kimg x metric values on stderr, then the best snapshot per metric."""
    from langfree.metrics.records import metric_rows
    from langfree.metrics.snapshot import best_row

    names = list(reports[0]["results"])
    typer.echo("  ".join([f"{'kimg':>10}"] + [f"{n:>16}" for n in names]), err=True)
    rows = []
    for rep in reports:
        rows += metric_rows(rep["results"], rep["snapshot"], rep["kimg"], rep["data"],
                            rep["sample_options"], "eval")
        values = [rep["results"][n].get("value") for n in names]
        typer.echo("  ".join([f"{rep['kimg']:>10.3f}"] + [f"{v:>16.4g}" if isinstance(v, (int, float))
                                                          else f"{'n/a':>16}" for v in values]), err=True)
    for name in names:
        best = best_row(rows, name)
        if best is not None:
            typer.echo(f"best {name}: {best['value']:.4g} at kimg {best['kimg']:g} ({best['snapshot_path']})",
                       err=True)


def register(app: typer.Typer) -> None:
    app.command("eval")(evaluate)
