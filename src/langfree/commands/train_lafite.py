"""``langfree train lafite`` (the seed's option names) and ``langfree train lafite-perturb``.

    langfree train lafite --data train.zip --test-data val.zip --temp 0.5 --itd 10 --itc 10 \
        --gamma 10 --mixing_prob 1.0 --mirror 1 --kimg 100 --batch 32 --workers 4 \
        --metrics fid10k_full --snap 2 --outdir runs

Options left unset take the preset's value (``--preset``; none = the paper's defaults with the
resolution of the archive). ``--set key=value`` overrides any LafiteConfig field last.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer

DEFAULT_ENCODER = "open_clip:ViT-B-32/openai"
PREVIEW_PROMPTS = 8
PREVIEW_SEEDS = 8


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _bool01(value: int | None, name: str) -> bool | None:
    if value is None:
        return None
    if value not in (0, 1):
        _fail(f"{name} {value}: use 0 or 1")
    return bool(value)


# ------------------------------------------------------------------------------ building
def build_config(preset_name: str | None, resolution: int, c_dim: int, options: dict,
                 overrides: list[str]):
    """Preset (or defaults) + the archive's resolution + CLI options + --set overrides."""
    from langfree.config import apply_overrides, to_dict
    from langfree.families.lafite.config import LafiteConfig, preset

    if preset_name is None:
        base = LafiteConfig(resolution=resolution)
    else:
        base = preset(preset_name)
        if base.resolution != resolution and not any(o.startswith("resolution=") for o in overrides):
            raise ValueError(f"the archive is {resolution} px but preset {preset_name!r} is "
                             f"{base.resolution} px; use an archive at {base.resolution} px or "
                             f"pass --set resolution={resolution}")
    data = to_dict(base)
    data["c_dim"] = c_dim
    data.update({k: v for k, v in options.items() if v is not None})
    return apply_overrides(LafiteConfig, data, overrides)


def preview_conditions(encoder, train_archive, test_archive) -> tuple[Any, list[str]]:
    """Fixed preview conditions [P, D] and their labels: shapes prompt_grid for shapes data,
    else test captions, else (no captions anywhere) image embeddings of the first images."""
    import torch

    from langfree.data.shapes import prompt_grid

    archive = test_archive or train_archive
    if archive.attributes(0) is not None:
        prompts = [p for p, _ in prompt_grid(PREVIEW_PROMPTS)]
    else:
        prompts = [archive.captions(i)[0] for i in range(min(len(archive), 64))
                   if archive.captions(i)][:PREVIEW_PROMPTS]
    with torch.no_grad():
        if prompts:
            return encoder.encode_text(prompts).float().cpu(), prompts
        count = min(PREVIEW_PROMPTS, len(archive))
        images = archive.images(range(count)).float() / 127.5 - 1
        return encoder.encode_image(images).float().cpu(), [f"image {i}" for i in range(count)]


def make_preview(conditions):
    """preview(family) -> [P·S, 3, H, W]: row p = condition p, column s = seed s."""
    P = conditions.shape[0]

    def preview(family):
        cond = conditions.repeat_interleave(PREVIEW_SEEDS, dim=0)               # [P·S, D]
        return family.sample(cond, list(range(PREVIEW_SEEDS)) * P)

    return preview


def make_metrics(names: str | None, reference: Path, encoder):
    if not names or names.lower() == "none":
        return None
    from langfree.metrics import evaluate_snapshot, parse_metric

    specs = [n.strip() for n in names.split(",") if n.strip()]
    for name in specs:
        parse_metric(name)                  # fail now on a bad name, not at the first snapshot

    def metrics(snapshot_dir):
        report = evaluate_snapshot(snapshot_dir, specs, reference, encoder=encoder, write=False,
                                   log=lambda m: print(m, file=sys.stderr))
        return report["results"]

    return metrics


def check_processes(gpus: int | None) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if gpus is not None and gpus != world:
        _fail(f"--gpus {gpus} but {world} process(es) are running; start several with "
              f"`accelerate launch --multi_gpu --num_processes {gpus} -m langfree train lafite ...` "
              f"(or torchrun --nproc_per_node {gpus}); --gpus only checks the count")


# ------------------------------------------------------------------------------ commands
def train_lafite(
    data: Path = typer.Option(..., "--data", help="Training archive (.zip from `langfree dataset` / `langfree shapes`)."),
    test_data: Path | None = typer.Option(None, "--test-data", "--test_data",
                                             help="Held-out archive: metrics reference and preview captions."),
    preset: str | None = typer.Option(None, "--preset", help="shapes32 | coco256 | mmceleba256 (default: paper defaults at the archive's resolution)."),
    encoder_spec: str | None = typer.Option(None, "--encoder", help=f"Encoder spec (default {DEFAULT_ENCODER}; a small-CLIP directory from `langfree encoder train`)."),
    temp: float | None = typer.Option(None, "--temp", help="Contrastive temperature τ."),
    itd: float | None = typer.Option(None, "--itd", help="Weight of the D-feature contrastive loss (d_contrastive_weight)."),
    itc: float | None = typer.Option(None, "--itc", help="Weight of the CLIP contrastive loss on fakes (clip_contrastive_weight)."),
    gamma: float | None = typer.Option(None, "--gamma", help="R1 weight γ."),
    mixing_prob: float | None = typer.Option(None, "--mixing_prob", "--mixing-prob",
                                                help="P(pseudo text feature) per sample: 1 = language-free (no captions needed), 0 = standard."),
    mirror: int | None = typer.Option(None, "--mirror", help="1: x-flip reals (features not flipped)."),
    conditioning: str | None = typer.Option(None, "--conditioning", help="gaussian | learned | none."),
    perturb: Path | None = typer.Option(None, "--perturb", help="Learned perturbation dir (`langfree train lafite-perturb`); implies --conditioning learned."),
    kimg: float = typer.Option(100.0, "--kimg", help="Training length in thousands of real images shown."),
    batch: int = typer.Option(32, "--batch", help="Global batch size."),
    batch_gpu: int | None = typer.Option(None, "--batch-gpu", help="Micro-batch per process."),
    tick: float = typer.Option(4.0, "--tick", help="kimg per progress tick."),
    workers: int = typer.Option(0, "--workers", help="DataLoader worker processes."),
    metrics: str | None = typer.Option(None, "--metrics", help="Comma-separated metrics at each snapshot (fid10k_full, attribute_accuracy, ...) or none."),
    snap: int = typer.Option(50, "--snap", help="Ticks between snapshots (+ metrics)."),
    outdir: Path = typer.Option(Path("runs"), "--outdir", help="Where run directories go."),
    gpus: int | None = typer.Option(None, "--gpus", help="Number of processes (GPUs). langfree does not spawn them: start N with `accelerate launch --multi_gpu --num_processes N -m langfree train lafite ...` (or torchrun --nproc_per_node N); --gpus N then checks that N are running."),
    seed: int = typer.Option(0, "--seed"),
    deterministic: bool = typer.Option(False, "--deterministic", help="Deterministic kernels (exact resume; slower on GPU)."),
    resume: str | None = typer.Option(None, "--resume", help="latest | run dir | state dir."),
    mixed_precision: str = typer.Option("no", "--mixed-precision", help="no | bf16."),
    overrides: list[str] = typer.Option([], "--set", help="Override a LafiteConfig field: --set key=value (repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and exit."),
) -> None:
    """Train LAFITE (language-free by default) on the one training loop."""
    from langfree.commands.training import run_training
    from langfree.config import ConfigError
    from langfree.data.archive import ArchiveError, ImageArchive
    from langfree.training.loop import TrainOptions
    from langfree.training.state import seed_everything

    check_processes(gpus)
    if perturb is not None and conditioning not in (None, "learned"):
        _fail(f"--perturb needs --conditioning learned, not {conditioning!r}")
    try:
        archive = ImageArchive(data)
        test_archive = ImageArchive(test_data) if test_data else None
        encoder = _load_encoder(encoder_spec or DEFAULT_ENCODER)
        options = {"temperature": temp, "d_contrastive_weight": itd,
                   "clip_contrastive_weight": itc, "r1_gamma": gamma, "mixing_prob": mixing_prob,
                   "mirror": _bool01(mirror, "--mirror"),
                   "conditioning": "learned" if perturb is not None else conditioning,
                   "perturb_path": str(perturb.resolve()) if perturb is not None else None,
                   **_perturb_widths(perturb)}
        config = build_config(preset, archive.resolution, encoder.embed_dim, options, overrides)
        _check_captions(config, archive, data)
        seed_everything(seed)  # initial weights follow --seed (same on every process)
        family = build_family(config, encoder)
        _print_sizes(family)
        dataset = None if dry_run else conditioned_dataset(archive, data, encoder, seed)
        preview_cond, prompts = preview_conditions(encoder, archive, test_archive)
        metric_fn = make_metrics(metrics, test_data or data, encoder)
    except (ArchiveError, ConfigError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    train_options = TrainOptions(outdir=str(outdir), kimg=kimg, batch=batch, batch_gpu=batch_gpu,
                                 tick_kimg=tick, snap=snap, seed=seed, deterministic=deterministic,
                                 resume=resume, workers=workers, dry_run=dry_run,
                                 mixed_precision=mixed_precision)
    run_config = {"command": "train lafite", "data": str(Path(data).resolve()),
                  "test_data": str(Path(test_data).resolve()) if test_data else None,
                  "preset": preset, "metrics": metrics, "preview_prompts": prompts,
                  "parameters": family.parameter_counts(),
                  "gpus": gpus or int(os.environ.get("WORLD_SIZE", "1"))}
    run_dir = run_training(family, dataset, train_options, run_config,
                           preview=make_preview(preview_cond), metrics=metric_fn)
    if not dry_run:
        typer.echo(f"done: {run_dir}")


def _load_encoder(spec: str):
    from langfree.encoders import load_encoder
    from langfree.encoders.clip import EncoderUnavailable

    try:
        return load_encoder(spec)
    except EncoderUnavailable as exc:  # its message says what to pass instead
        _fail(str(exc))


def _perturb_widths(perturb: Path | None) -> dict:
    """The MLP widths recorded beside a trained perturbation (the config must match them)."""
    if perturb is None:
        return {}
    from langfree.families.lafite.perturb import META

    folder = perturb if perturb.is_dir() else perturb.parent
    if not (folder / META).is_file():
        raise FileNotFoundError(f"--perturb {perturb}: no {META} there; train one with "
                                "`langfree train lafite-perturb --data CAPTIONED.zip --out DIR`")
    import json

    meta = json.loads((folder / META).read_text())
    return {"perturb_hidden": meta["hidden"], "perturb_layers": meta["layers"]}


def _check_captions(config, archive, path: Path) -> None:
    if config.mixing_prob < 1.0 and not archive.has_captions:
        raise ValueError(f"--mixing_prob {config.mixing_prob} trains on real captions, but {path} "
                         "has images without captions; use --mixing_prob 1.0 (language-free, "
                         "images only) or build the archive from images with X.txt captions")


def build_family(config, encoder):
    from langfree.families.lafite.family import LafiteFamily

    family = LafiteFamily(config, encoder)
    if config.conditioning == "learned":
        if not config.perturb_path:
            raise ValueError("--conditioning learned needs --perturb DIR (train one with "
                             "`langfree train lafite-perturb --data CAPTIONED.zip --out DIR`)")
        family.load_perturbation(config.perturb_path)
    return family


def conditioned_dataset(archive, path: Path, encoder, seed: int):
    from langfree.data.features import ConditionedDataset, load_features

    features = load_features(path, encoder)
    return ConditionedDataset(archive, features, seed=seed)


def _print_sizes(family) -> None:
    counts = family.parameter_counts()
    parts = "  ".join(f"{k} {v / 1e6:.2f} M" for k, v in counts.items())
    typer.echo(f"LAFITE parameters: {parts}  (G + D {(counts['G'] + counts['D']) / 1e6:.2f} M)",
               err=True)


def train_perturb(
    data: Path = typer.Option(..., "--data", help="CAPTIONED archive (image + caption pairs)."),
    encoder_spec: str = typer.Option(DEFAULT_ENCODER, "--encoder", help="Encoder spec (the one the GAN will use)."),
    out: Path = typer.Option(..., "--out", help="Output directory (perturb.safetensors + perturb.json)."),
    steps: int = typer.Option(2000, "--steps", min=1),
    batch: int = typer.Option(64, "--batch", min=2),
    lr: float = typer.Option(1e-3, "--lr"),
    hidden: int | None = typer.Option(None, "--hidden", help="MLP width (default 2 x feature dim, max 1024)."),
    layers: int = typer.Option(4, "--layers", min=2),
    temperature: float = typer.Option(0.1, "--temp"),
    kl_weight: float = typer.Option(0.01, "--kl"),
    align_weight: float = typer.Option(1.0, "--align"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Train the LAFITE-NN perturbation (image feature -> pseudo text feature) on a captioned archive."""
    from langfree.data.archive import ArchiveError, ImageArchive
    from langfree.families.lafite.perturb import save_perturbation, train_perturbation

    try:
        archive = ImageArchive(data)
        if not any(archive.captions(i) for i in range(len(archive))):
            raise ValueError(f"{data} has no captions; the perturbation learns from image-caption "
                             "pairs (use the captioned split, e.g. the small-CLIP training data)")
        encoder = _load_encoder(encoder_spec)
        from langfree.data.features import load_features

        feats = load_features(data, encoder)
        width = hidden or min(1024, 2 * encoder.embed_dim)
        net, meta = train_perturbation(feats.image_emb, feats.caption_emb, feats.caption_offsets,
                                       hidden=width, layers=layers, steps=steps, batch=batch, lr=lr,
                                       temperature=temperature, kl_weight=kl_weight,
                                       align_weight=align_weight, seed=seed,
                                       log=lambda m: typer.echo(m, err=True))
    except (ArchiveError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    meta.update({"encoder": encoder.spec, "data": str(Path(data).resolve())})
    save_perturbation(net, meta, out)
    typer.echo(f"wrote {out} (use it with: langfree train lafite --perturb {out} ...)")


def register(group: typer.Typer) -> None:
    group.command("lafite")(train_lafite)
    group.command("lafite-perturb")(train_perturb)
