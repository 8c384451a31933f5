"""``train(request) -> run_dir``: one training run of any family, from Python or the CLI.

    from langfree.training.run import TrainRequest, train
    run_dir = train(TrainRequest("FAMILY", data="shapes.zip", encoder="runs/clip",
                                 preset="NAME", options=TrainOptions(kimg=10)))

The request is resolved the same way for every family: archive(s) -> encoder (when the family
conditions on one) -> config (preset or defaults, the family's ``configure``, its flags, then
``--set``) -> ``Family(config, encoder)`` -> the family's ``prepare`` -> the dataset its
``needs`` declare -> preview conditions and metrics -> the one loop. ``langfree train FAMILY``
(commands/training.py) only parses options into a TrainRequest.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langfree.training.options import TrainingError, TrainOptions, check_options

PREVIEW_PROMPTS = 8
PREVIEW_SEEDS = 8


@dataclass
class TrainRequest:
    """Everything ``langfree train FAMILY`` takes. ``family_options``: config field -> value
    from the family's flags (None = not given); ``overrides``: ``--set key=value`` strings;
    ``sample``: ``key=value`` sampling options for preview grids and metrics."""

    family: str
    data: str | os.PathLike | None = None
    test_data: str | os.PathLike | None = None
    encoder: str | None = None
    preset: str | None = None
    family_options: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    metrics: str | None = None
    sample: list[str] = field(default_factory=list)
    gpus: int | None = None
    options: TrainOptions = field(default_factory=TrainOptions)
    # TrainOptions fields the caller set; on --resume the others come from the run's record
    # (None: every field counts as set, as from Python)
    given: frozenset[str] | None = None


@dataclass
class Context:
    """What a family's ``configure`` / ``prepare`` hooks see."""

    request: TrainRequest
    archive: Any
    test_archive: Any
    encoder: Any
    preset: str | None


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message tells the user what to do (the CLI prints one line, exit 2)."""
    from langfree.checkpoint import SnapshotError
    from langfree.config import ConfigError
    from langfree.data.archive import ArchiveError
    from langfree.data.pipeline import NeedError
    from langfree.encoders.clip import EncoderUnavailable
    from langfree.training.state import StateError

    return (TrainingError, StateError, SnapshotError, ConfigError, ArchiveError, NeedError,
            EncoderUnavailable, ValueError, FileNotFoundError)


def check_processes(gpus: int | None) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if gpus is not None and gpus != world:
        raise TrainingError(
            f"--gpus {gpus} but {world} process(es) are running; start several with "
            f"`accelerate launch --multi_gpu --num_processes {gpus} -m langfree train ...` "
            f"(or torchrun --nproc_per_node {gpus}); --gpus only checks the count")


def _recorded(request: TrainRequest) -> dict | None:
    """The config.json of the run a ``--resume`` names (None for a new run)."""
    if not request.options.resume:
        return None
    from langfree.training.state import resolve_resume

    run_dir, _ = resolve_resume(request.options.resume, request.options.outdir)
    path = run_dir / "config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _with_recorded(request: TrainRequest, recorded: dict) -> TrainRequest:
    """Resume takes the run's recorded data, encoder and preset where the request gives none
    (conflicting values are refused by the loop, naming the keys)."""
    run = recorded.get("run") or {}
    if recorded.get("family") not in (None, request.family):
        raise TrainingError(f"--resume: that run trained family {recorded['family']!r}, not "
                            f"{request.family!r}; use `langfree train {recorded['family']} --resume ...`")
    for key, given in (("preset", request.preset), ("data", request.data),
                       ("test_data", request.test_data)):
        was = run.get(key)
        if given is not None and was is not None and str(
                Path(given).resolve() if key != "preset" else given) != str(was):
            raise TrainingError(f"--resume: the run was started with --{key.replace('_', '-')} "
                                f"{was}, not {given}; leave it unset to use the run's, or start "
                                "a new run")
    options = request.options
    if request.given is not None:
        from langfree.training.options import RESUMABLE_CHANGES

        names = {f.name for f in dataclasses.fields(TrainOptions)} - RESUMABLE_CHANGES
        train = recorded.get("train") or {}
        keep = {k: train[k] for k in names - request.given if k in train}
        options = dataclasses.replace(options, **keep)
    return dataclasses.replace(
        request,
        options=options,
        data=request.data or run.get("data"),
        test_data=request.test_data or run.get("test_data"),
        encoder=request.encoder or recorded.get("encoder"),
        preset=request.preset or run.get("preset"),
    )


def load_encoder_for(spec: Any, request: TrainRequest) -> Any:
    if spec.encoder == "none":
        if request.encoder:
            raise TrainingError(f"family {spec.name} uses no encoder; drop --encoder")
        return None
    name = request.encoder or spec.default_encoder
    if name is None:
        if spec.encoder == "required":
            raise TrainingError(f"family {spec.name} conditions on an encoder: pass --encoder SPEC "
                                "(open_clip:ViT-B-32@/path/weights, or a directory from "
                                "`langfree encoder train CAPTIONED.zip --outdir DIR`)")
        return None
    from langfree.encoders import load_encoder

    return load_encoder(str(name))


def build_config(spec: Any, ctx: Context, recorded: dict | None = None) -> Any:
    """Preset (or the recorded config on resume, or defaults) -> the family's ``configure`` ->
    its flags -> ``--set`` overrides, validated as the family's Config."""
    from langfree.config import apply_overrides, to_dict
    from langfree.families.spec import resolve

    cls, request = spec.config_class(), ctx.request
    presets = spec.preset_table()
    if recorded is not None and recorded.get("config") is not None:
        data = dict(recorded["config"])
    elif request.preset is not None:
        if request.preset not in presets:
            raise TrainingError(f"unknown {spec.name} preset {request.preset!r}; choose one of "
                                f"{', '.join(sorted(presets)) or '(none)'}")
        data = to_dict(presets[request.preset])
    else:
        data = to_dict(cls())
    configure = resolve(spec.configure)
    if configure is not None and recorded is None:
        data = configure(data, ctx)
    flags = {f.field: f for f in spec.flags}
    for key, value in request.family_options.items():
        if value is None:
            continue
        convert = resolve(flags[key].convert) if key in flags else None
        data.update(convert(value) if convert is not None else {key: value})
    return apply_overrides(cls, data, list(request.overrides))


def preview_conditions(encoder: Any, archive: Any, test_archive: Any, count: int = PREVIEW_PROMPTS):
    """Fixed preview rows: the shapes prompt grid on shapes data, else held-out (or training)
    captions, else (no captions anywhere) the first images as reference images."""

    from langfree.data.shapes import prompt_grid
    from langfree.sampling.conditions import build_conditions

    source = test_archive or archive
    if source.attributes(0) is not None:
        prompts = [p for p, _ in prompt_grid(count)]
    else:
        prompts = [source.captions(i)[0] for i in range(min(len(source), 64))
                   if source.captions(i)][:count]
    if prompts:
        return build_conditions(encoder, prompts)
    if encoder is None:
        return None
    n = min(count, len(source))
    images = source.images(range(n)).float() / 127.5 - 1
    return build_conditions(encoder, images=[images[i:i + 1] for i in range(n)])


def make_preview(conditions: Any, options: Any, seeds: int = PREVIEW_SEEDS):
    """preview(family) -> [P·S, 3, H, W]: row p = condition p, column s = seed s."""
    if conditions is None:
        return None
    from langfree.sampling.generate import generate_grid

    def preview(family):
        grid = generate_grid(family, conditions, list(range(seeds)), options)
        return grid.flatten(0, 1)

    return preview


def make_metrics(names: str | None, reference: Any, encoder: Any, sample: list[str]):
    if not names or names.lower() == "none":
        return None
    from langfree.metrics import evaluate_snapshot, parse_metric

    specs = [n.strip() for n in names.split(",") if n.strip()]
    for name in specs:
        parse_metric(name)                  # fail now on a bad name, not at the first snapshot

    def metrics(snapshot_dir):
        report = evaluate_snapshot(snapshot_dir, specs, reference, encoder=encoder, write=False,
                                   sample=sample, source="train",
                                   log=lambda m: print(m, file=sys.stderr))
        return report["rows"]

    return metrics


def prepare(request: TrainRequest) -> tuple[TrainRequest, Any, Any, dict, Any, Any]:
    """Everything but the loop: (the request as resolved — on resume with the run's recorded
    settings —, family, dataset or None on a dry run, run_config, preview, metrics). The
    family's initial weights follow ``options.seed``."""
    from langfree.data.archive import ImageArchive
    from langfree.data.pipeline import build_dataset
    from langfree.families.base import parameter_counts
    from langfree.families.registry import get_spec
    from langfree.families.spec import resolve
    from langfree.sampling.conditions import build_conditions, parse_sample_options
    from langfree.training.memory import check_memory
    from langfree.training.state import seed_everything

    check_processes(request.gpus)
    spec = get_spec(request.family)
    recorded = _recorded(request)
    if recorded is not None:
        request = _with_recorded(request, recorded)
    # the options first: a wrong --tick is refused in a second, not after the model is built
    check_options(request.options, int(os.environ.get("WORLD_SIZE", "1")))
    if not request.options.dry_run:
        from langfree.io import check_writable

        try:
            check_writable(request.options.outdir, "--outdir")
        except OSError as exc:  # read-only, full, or a file: refused before anything is built
            raise TrainingError(str(exc)) from None
    owns_data = spec.data == "own"
    if request.data is None and not owns_data:
        raise TrainingError("--data is required: the training archive (.zip from "
                            "`langfree dataset` or `langfree shapes`)")
    archive = ImageArchive(request.data) if request.data is not None else None
    test_archive = ImageArchive(request.test_data) if request.test_data else None
    encoder = load_encoder_for(spec, request)
    ctx = Context(request, archive, test_archive, encoder, request.preset)
    config = build_config(spec, ctx, recorded)
    if recorded is not None:  # refuse a conflicting resume before a sidecar or model is made
        from langfree.config import to_dict
        from langfree.training.options import check_resume_config
        from langfree.training.state import resolve_resume

        run_dir, _ = resolve_resume(request.options.resume, request.options.outdir)
        check_resume_config(run_dir / "config.json", json.loads(json.dumps({
            "family": recorded.get("family"), "config": to_dict(config),
            "encoder": getattr(encoder, "spec", None)}, default=str)))
    options, world = request.options, int(os.environ.get("WORLD_SIZE", "1"))
    check_memory(spec.family_class(), config, encoder, options.batch_gpu or options.batch // world)
    seed_everything(request.options.seed)  # initial weights follow --seed (same on every process)
    family = spec.family_class()(config, encoder)
    hook = resolve(spec.prepare)
    if hook is not None:
        hook(family, ctx)
    generates = hasattr(family, "sample")  # a family may train a non-image part (no previews)
    sample = parse_sample_options(family, request.sample) if generates else None
    hook = resolve(spec.train_options)
    if hook is not None:
        given = request.given if request.given is not None else frozenset(
            f.name for f in dataclasses.fields(TrainOptions))
        request = dataclasses.replace(request, options=hook(config, request.options, given))
    if request.options.dry_run:
        dataset = None
    elif owns_data:
        dataset = family.dataset()
    else:
        dataset = build_dataset(family, archive, encoder, request.options.seed)
    conditions = None
    if generates and archive is not None:
        conditions = preview_conditions(encoder, archive, test_archive)
    elif generates and getattr(family, "preview_prompts", None):
        conditions = build_conditions(encoder, list(family.preview_prompts()))
    run_config = {
        "command": f"train {request.family}",
        "data": str(Path(request.data).resolve()) if request.data is not None else None,
        "test_data": str(Path(request.test_data).resolve()) if request.test_data else None,
        "preset": request.preset, "metrics": request.metrics, "sample": list(request.sample),
        "preview_prompts": list(conditions.labels) if conditions is not None else [],
        "parameters": parameter_counts(family),
        "gpus": request.gpus or int(os.environ.get("WORLD_SIZE", "1")),
    }
    metrics = make_metrics(request.metrics, request.test_data or request.data, encoder,
                           list(request.sample))
    preview = make_preview(conditions, sample, seeds=spec.preview_seeds)
    return request, family, dataset, run_config, preview, metrics


def train(request: TrainRequest) -> Path:
    """Run ``request`` on the one training loop; returns the run directory."""
    from langfree.families.registry import get_spec
    from langfree.families.spec import resolve
    from langfree.training.loop import train as run_loop

    request, family, dataset, run_config, preview, metrics = prepare(request)
    counts = run_config["parameters"]
    print(f"{request.family} parameters: "
          + "  ".join(f"{k} {v / 1e6:.2f} M" for k, v in counts.items()), file=sys.stderr)
    run_dir = run_loop(family, dataset, request.options, run_config, preview=preview,
                       metrics=metrics)
    finish = resolve(get_spec(request.family).finish)
    if finish is not None and not request.options.dry_run:
        finish(family, run_dir, request)
    return run_dir
