"""What a family contributes to ``langfree train FAMILY``: its config, presets, flags, and two
hooks. Light on purpose (no torch): the CLI reads every family's spec to build ``--help``.

A family package ``langfree.families.<name>`` defines ``SPEC = TrainSpec(...)`` in its
``__init__.py``; ``families/registry.py`` maps the family name to that package. Targets are
``"module:attr"`` strings resolved on first use, so listing families imports no model code.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ENCODER_MODES = ("required", "optional", "none")


def resolve(target: str | Callable | None) -> Any:
    """``"pkg.module:attr"`` -> the attribute (callables and None pass through)."""
    if target is None or not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    if not attr:
        raise ValueError(f"target {target!r}: expected 'package.module:attribute'")
    return getattr(importlib.import_module(module), attr)


def fit_resolution(data: dict, ctx: Any) -> dict:
    """A ``configure`` step most image families share: the config takes the archive's
    resolution; a preset made for another resolution is refused unless ``--set resolution=``
    says otherwise."""
    resolution = ctx.archive.resolution
    overridden = any(o.startswith("resolution=") for o in ctx.request.overrides)
    if ctx.preset is None:
        data["resolution"] = resolution
    elif data["resolution"] != resolution and not overridden:
        raise ValueError(f"the archive is {resolution} px but preset {ctx.preset!r} is "
                         f"{data['resolution']} px; use an archive at {data['resolution']} px or "
                         f"pass --set resolution={resolution}")
    return data


def check_caption_mixing(mixing_prob: float, archive: Any) -> None:
    """``--mixing_prob`` < 1 trains on real captions where an image has one (the others get
    pseudo text features): refused only when no image of the archive has a caption; a partly
    captioned archive is used, saying how many images have captions."""
    if mixing_prob >= 1.0 or archive is None:
        return
    import sys

    from langfree.data.archive import captioned_indices

    n, captioned = len(archive), len(captioned_indices(archive))
    if captioned == 0:
        raise ValueError(f"--mixing_prob {mixing_prob} trains on real captions, but none of the "
                         f"{n} images of {archive.path} has one; use --mixing_prob 1.0 "
                         "(language-free, images only) or build the archive from images with "
                         "X.txt captions (`langfree dataset SRC DEST.zip`)")
    if captioned < n:
        print(f"--mixing_prob {mixing_prob}: {captioned} of {n} images of {archive.path} have "
              f"captions; the other {n - captioned} always train on pseudo text features",
              file=sys.stderr)


@dataclass(frozen=True)
class Flag:
    """A family option of ``langfree train FAMILY``.

    names:   the option strings (``("--temp",)``; the seed's names where a seed has them)
    field:   the config field it sets (``"temperature"``)
    type:    float | int | str | bool (bool flags take 0/1, as the seed's ``--mirror 1``)
    help:    one line for ``--help``
    convert: optional ``(value) -> dict`` of config keys, for a flag that sets several fields
             or needs a file read (e.g. LAFITE's ``--perturb DIR``)
    switch:  a bool flag given by presence (``--hflip``), as the diffusers examples' switches
    """

    names: tuple[str, ...]
    field: str
    type: type
    help: str
    convert: str | Callable[[Any], dict] | None = None
    switch: bool = False

    @property
    def param(self) -> str:
        """The Python parameter name typer binds it to (unique across common options)."""
        return "family_" + self.field


@dataclass(frozen=True)
class TrainSpec:
    """A family's entry in the generic train command (see docs/CONTRACTS.md, "Families").

    family / config / presets: ``"module:attr"`` of the Family class, its frozen Config
    dataclass and its ``dict[str, Config]`` of presets.
    configure(data: dict, ctx) -> dict: fills config keys from the data and the encoder
    (resolution, embedding width) before validation; raises ValueError saying what to pass.
    prepare(family, ctx) -> None: after the family is built (loads external weights, checks
    inputs against the config).
    encoder: "required" (conditions on an encoder's embeddings), "optional" or "none".
    default_encoder: the spec used when ``--encoder`` is not given (None: must be given when
    required).
    converters: ``langfree convert NAME`` commands: name -> ``"module:function"`` of a typer
    command function (e.g. an official checkpoint importer).
    commands: other ``langfree GROUP NAME`` commands of the family: ``"GROUP NAME"`` ->
    ``"module:function"`` (e.g. ``"tokenizer train"`` for a BPE trainer).
    data: "archive" (``--data`` is the training archive; the dataset is built from ``needs``)
    or "own" (the family reads its own inputs in ``prepare`` and trains on ``family.dataset()``;
    ``--data`` is optional).
    train_options(config, options: TrainOptions, given: frozenset[str]) -> TrainOptions: the
    family derives loop options the user did not give from its config (e.g. a step count).
    finish(family, run_dir, ctx) -> None: after training (e.g. copy the export somewhere).
    preview_seeds: columns of the snapshot preview grid (a many-step sampler may want fewer).
    """

    name: str
    family: str
    config: str
    help: str
    presets: str | None = None
    flags: tuple[Flag, ...] = ()
    configure: str | Callable | None = None
    prepare: str | Callable | None = None
    encoder: str = "required"
    default_encoder: str | None = None
    converters: dict[str, str] = field(default_factory=dict)
    commands: dict[str, str] = field(default_factory=dict)
    data: str = "archive"
    train_options: str | Callable | None = None
    finish: str | Callable | None = None
    preview_seeds: int = 8

    def __post_init__(self) -> None:
        if self.data not in ("archive", "own"):
            raise ValueError(f"TrainSpec {self.name}: data={self.data!r}, use 'archive' or 'own'")
        if self.encoder not in ENCODER_MODES:
            raise ValueError(f"TrainSpec {self.name}: encoder={self.encoder!r}, use one of "
                             f"{', '.join(ENCODER_MODES)}")

    def family_class(self) -> type:
        return resolve(self.family)

    def config_class(self) -> type:
        return resolve(self.config)

    def preset_table(self) -> dict[str, Any]:
        return dict(resolve(self.presets) or {})
