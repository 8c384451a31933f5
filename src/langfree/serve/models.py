"""What the web UI serves: snapshots (from snapshot or run directories), the traits of their
families, and a small cache of loaded families.

Nothing here names a family. Everything the UI shows for a family comes from its class:
``SampleOptions`` (the option controls, from the dataclass fields and their ``min`` / ``max`` /
``choices`` / ``help`` metadata) and two optional class attributes:

- ``uses_negative_prompt`` (bool, default False): its guidance reads
  ``conditions.negative_prompts``, so the UI shows a negative-prompt box.
- ``supports_image_variation`` (bool): a reference image's encoder embedding is a valid
  condition. When the attribute is absent it defaults to whether the family's ``TrainSpec``
  says ``encoder="required"`` (it conditions on encoder embeddings, and those of an image are as
  good as those of a text). Either way the loaded snapshot must also record an encoder.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import typing
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class OptionSpec:
    """One field of a family's SampleOptions, as the UI needs it."""

    name: str
    kind: str                       # "bool" | "int" | "float" | "str"
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple | None = None
    help: str = ""


def option_specs(options_cls: type) -> list[OptionSpec]:
    """The fields of a SampleOptions dataclass -> OptionSpecs (type from the annotation, else
    from the default)."""
    try:
        hints = typing.get_type_hints(options_cls)
    except Exception:  # an annotation that cannot be resolved: fall back to the default's type
        hints = {}
    specs = []
    for f in dataclasses.fields(options_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        tp = hints.get(f.name, type(default))
        kind = next((k.__name__ for k in (bool, int, float, str) if tp is k),
                    type(default).__name__)
        meta = f.metadata
        choices = tuple(meta["choices"]) if "choices" in meta else None
        specs.append(OptionSpec(f.name, kind, default, meta.get("min"), meta.get("max"),
                                choices, str(meta.get("help", ""))))
    return specs


@dataclass(frozen=True)
class Traits:
    """What the UI shows for one family (read from its class, never from its name)."""

    family: str
    options: tuple[OptionSpec, ...]
    uses_negative_prompt: bool
    supports_image_variation: bool


def family_traits(name: str) -> Traits:
    """Traits of the registered family ``name`` (imports its code, loads no weights)."""
    from langfree.families.registry import get_family, get_spec
    from langfree.sampling.conditions import sample_options_class

    cls = get_family(name)
    variation = getattr(cls, "supports_image_variation", None)
    if variation is None:
        variation = getattr(get_spec(name), "encoder", "none") == "required"
    return Traits(family=name, options=tuple(option_specs(sample_options_class(cls))),
                  uses_negative_prompt=bool(getattr(cls, "uses_negative_prompt", False)),
                  supports_image_variation=bool(variation))


@dataclass(frozen=True)
class ModelEntry:
    """One servable snapshot. ``label`` is what the browser sees and sends back; the path never
    leaves the server except inside a PNG's ``parameters`` chunk (as ``langfree generate``)."""

    label: str
    path: Path
    family: str
    has_encoder: bool
    run_dir: Path | None


def discover(paths: list[str | Path]) -> tuple[list[ModelEntry], list[Path]]:
    """Snapshot or run directories -> (entries, run dirs). A run dir contributes all its
    snapshots, latest first; the first entry is the default model."""
    from langfree.checkpoint import SnapshotError, list_snapshots, read_manifest

    entries: list[ModelEntry] = []
    runs: list[Path] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw).resolve()
        if (path / "manifest.json").is_file():
            snaps, run = [path], _run_of(path)
        else:
            snaps = list(reversed(list_snapshots(path)))
            if not snaps:
                raise SnapshotError(f"{raw}: no snapshot found; pass a snapshot directory (with "
                                    "manifest.json) or a run directory with snapshots/snapshot-*")
            run = path
        if run is not None and run not in runs:
            runs.append(run)
        for snap in snaps:
            if snap in seen:
                continue
            seen.add(snap)
            read_manifest(snap)  # fails early, with its message, on a foreign directory
            config = json.loads((snap / "config.json").read_text())
            label = f"{run.name}/{snap.name}" if run is not None else snap.name
            labels = {e.label for e in entries}
            base, i = label, 2
            while label in labels:
                label, i = f"{base} ({i})", i + 1
            entries.append(ModelEntry(label, snap, config["family"],
                                      config.get("encoder") is not None, run))
    if not entries:
        raise SnapshotError("nothing to serve: pass at least one snapshot or run directory")
    return entries, runs


def _run_of(snapshot: Path) -> Path | None:
    run = snapshot.parent.parent
    if snapshot.parent.name == "snapshots" and (
            (run / "stats.jsonl").is_file() or (run / "config.json").is_file()):
        return run
    return None


class ModelCache:
    """Loaded families by snapshot path, the ``size`` most recently used kept in memory.

    Loading happens under a lock (two requests for a cold model load it once); sampling does
    not hold it, so different requests sample concurrently (families sample without global
    state: the engine contract)."""

    def __init__(self, encoder: str | None = "auto", size: int = 2):
        self.encoder, self.size = encoder, size
        self._loaded: OrderedDict[Path, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, entry: ModelEntry) -> Any:
        from langfree.checkpoint import load_snapshot

        with self._lock:
            family = self._loaded.pop(entry.path, None)
            if family is None:
                family = load_snapshot(entry.path, encoder=self.encoder)
            self._loaded[entry.path] = family
            while len(self._loaded) > self.size:
                self._loaded.popitem(last=False)
            return family
