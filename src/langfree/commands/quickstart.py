"""``langfree quickstart``: the README's main job on the embedded default (`make quickstart`)."""

from __future__ import annotations

from pathlib import Path

import typer


def quickstart(
    outdir: Path = typer.Option(Path("runs/quickstart"), "--outdir", help="Where data, models and report.json go."),
    family: str = typer.Option("lafite", "--family", help="The generator trained language-free: "
                               "lafite (StyleGAN2, the default), maskdit (a small VAE, then "
                               "masked latent diffusion), dalle (a VQGAN, then an autoregressive "
                               "transformer with a CLIP prefix) or custom-diffusion (a small SD "
                               "base without stars, then Custom Diffusion on 5 star images)."),
    kimg: float = typer.Option(None, "--kimg", help="The generator's training length (default: the plan's, sized for ~15 min on 2 CPU cores)."),
    smoke: bool = typer.Option(False, "--smoke", help="A seconds-long run of every stage (tests)."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Draw shapes data, train a small CLIP on captions, train FAMILY on images only, evaluate.

    Writes OUTDIR/report.json (attribute accuracy, its ceiling on real images, R-precision, FID with
    its extractor named, diversity, unprompted coverage, the bars, kimg, minutes) and
    OUTDIR/grid.png (rows = prompts, columns = seeds). Families share the data, CLIP and
    evaluator of one OUTDIR.
    """
    import dataclasses

    from langfree.quickstart import SMOKE_PLAN, QuickstartPlan, family_stage, run_quickstart

    try:
        stage = family_stage(family)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--family") from None
    plan = dataclasses.replace(SMOKE_PLAN if smoke else QuickstartPlan(), seed=seed)
    plan, family_plan = stage.plans(plan, None, smoke, kimg)
    report = run_quickstart(outdir, plan, family=family, family_plan=family_plan)
    acc = report["attribute_accuracy"]
    typer.echo("attribute accuracy: " + "  ".join(f"{k} {v:.3f}" for k, v in acc.items() if v is not None))
    typer.echo(f"FID ({report['fid'].get('extractor')}): {report['fid'].get('value')}")
    typer.echo(f"report: {Path(outdir) / 'report.json'}")
    typer.echo(f"grid:   {Path(outdir) / 'grid.png'}")
    typer.echo(f"minutes: {report['minutes']}")


def register(app: typer.Typer) -> None:
    app.command("quickstart")(quickstart)
