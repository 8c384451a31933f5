"""The bad-input table (issue 10): one CLI invocation per case, end to end through ``langfree``.

Every case must exit non-zero with one ``error:`` line that names the input, raise no
traceback, and leave the directory tree exactly as it was (no run dir, no sidecar, no
half-written archive or image, no changed file). To cover a new command or input, add a
``Case`` to ``CASES``: ``args`` are the command line with ``{name}`` placeholders for the files of
the ``world`` fixture, ``names`` the substrings the message must contain, and ``fault`` an
optional patch (a full disk, a small machine) installed for that invocation only.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from test_lafite_family_helpers import TINY_SETS, tiny_small_clip

TINY = [a for s in TINY_SETS for a in ("--set", s)]
TRAIN = ["train", "lafite", "--kimg", "0.016", "--batch", "8", "--tick", "0.008", "--snap", "1",
         "--metrics", "none", *TINY]


def _chmod_blocks_writes(folder: Path) -> bool:
    """chmod 555 stops writes only for a non-root user (root ignores file modes)."""
    probe = folder / "probe"
    try:
        probe.write_bytes(b"")
    except PermissionError:
        return True
    probe.unlink()
    return False


def _full_disk(target: str, after: int = 0) -> Callable:
    """A fault: ``target`` (module:attr) raises ENOSPC from its ``after+1``-th call on."""

    def install(monkeypatch, world: Path) -> None:
        module, attr = target.split(":")
        import importlib

        owner, _, name = attr.rpartition(".")
        obj = importlib.import_module(module)
        for part in filter(None, owner.split(".")):
            obj = getattr(obj, part)
        real, calls = getattr(obj, name), []

        def filling(*args, **kwargs):
            calls.append(1)
            if len(calls) > after:
                raise OSError(errno.ENOSPC, "No space left on device", str(world / "disk"))
            return real(*args, **kwargs)

        monkeypatch.setattr(obj, name, filling)

    return install


def _small_machine(monkeypatch, world: Path) -> None:
    """A fault: 4 GB of RAM left (the estimate, not this machine's size, decides the case)."""
    from langfree.training import memory

    monkeypatch.delenv("LANGFREE_SKIP_MEMORY_CHECK", raising=False)
    monkeypatch.setattr(memory, "available_bytes", lambda: (4 * 2**30, "available RAM"))


def _read_only_outdir(monkeypatch, world: Path) -> Callable:
    (world / "ro").chmod(0o555)
    return lambda: (world / "ro").chmod(0o755)


@dataclass(frozen=True)
class Case:
    id: str
    args: list[str]
    names: tuple[str, ...]  # what the one error line must name ({placeholders} allowed)
    code: int = 2
    fault: Callable | None = None  # (monkeypatch, world) -> optional undo()
    skip: Callable[[Path], str | None] | None = None  # world -> reason to skip, or None


CASES = [
    # 1. resume: a conflicting option is refused before anything is written
    Case("resume-other-encoder", [*TRAIN, "--resume", "{run}", "--encoder", "{clip2}"],
         ("--resume", "encoder", "clip2")),
    Case("resume-nothing-to-resume", [*TRAIN, "--data", "{shapes}", "--encoder", "{clip}",
                                      "--resume", "latest", "--outdir", "{empty_dir}"],
         ("--resume latest", "empty_dir")),
    # 2. foreign zips, a model larger than the machine
    Case("train-foreign-zip", [*TRAIN, "--data", "{photos}", "--encoder", "{clip}",
                               "--outdir", "{new}"],
         ("photos.zip is not a langfree archive", "beach.png", "langfree dataset")),
    Case("train-too-big-for-memory", ["train", "lafite", "--data", "{big}", "--encoder", "{clip}",
                                      "--outdir", "{new}", "--metrics", "none"],
         ("512 px", "4.0 GB of available RAM", "--batch-gpu", "--batch"), fault=_small_machine),
    # 3. captions
    Case("mixing-without-captions", [*TRAIN, "--data", "{images}", "--encoder", "{clip}",
                                     "--mixing_prob", "0.5", "--outdir", "{new}"],
         ("--mixing_prob 0.5", "none of the 16 images", "images.zip")),
    Case("encoder-train-without-captions", ["encoder", "train", "{images}", "--outdir", "{new}",
                                            "--steps", "1", "--batch", "4", "--holdout", "2"],
         ("images.zip", "no captions (0 of 16")),
    # 4. disk and permission faults
    Case("train-outdir-is-a-file", [*TRAIN, "--data", "{shapes}", "--encoder", "{clip}",
                                    "--outdir", "{notes}/runs"],
         ("--outdir", "notes.txt", "not a folder")),
    Case("train-read-only-outdir", [*TRAIN, "--data", "{shapes}", "--encoder", "{clip}",
                                    "--outdir", "{ro}/runs"],
         ("--outdir", "ro", "Permission denied"), fault=_read_only_outdir,
         skip=lambda w: None if _chmod_blocks_writes(w / "ro_probe") else
         f"chmod 555 does not stop writes for uid {os.getuid()} (root ignores file modes); "
         "test_faults.py covers the handling with a patched write"),
    Case("dataset-full-disk", ["dataset", "{src}", "{new}.zip", "-r", "8", "--workers", "1"],
         ("No space left on device", "new.zip"),
         fault=_full_disk("langfree.data.archive:ArchiveWriter.add", after=1)),
    Case("generate-full-disk", ["generate", "{run}", "--prompt", "a red circle", "--seeds", "0-2",
                                "--outdir", "{new}"],
         ("No space left on device", "new"),
         fault=_full_disk("langfree.sampling.generate:save_png", after=2)),
    # 6. the smaller ones
    Case("train-tick-0-before-anything-loads", [*TRAIN, "--data", "{shapes}", "--encoder",
                                                "{world}/no-such-encoder", "--tick", "0",
                                                "--outdir", "{new}"],
         ("--tick 0",)),
    Case("convert-text-file", ["convert", "lafite-pkl", "{notes}", "{new}"],
         ("notes.txt", "not a readable LAFITE network pickle")),
    Case("generate-empty-prompt", ["generate", "{run}", "--prompt", "", "--outdir", "{new}"],
         ("--prompt ''", "empty")),
    Case("generate-repeated-seeds", ["generate", "{run}", "--prompt", "a red circle", "--seeds",
                                     "1,1,2", "--outdir", "{new}"],
         ("--seeds '1,1,2'", "seed 1 given twice")),
    Case("dataset-resolution-33", ["dataset", "{src}", "{new}.zip", "-r", "33"],
         ("--resolution 33", "power of two", "32 or 64")),
    Case("shapes-resolution-33", ["shapes", "{new}.zip", "-n", "4", "-r", "33"],
         ("--resolution 33", "power of two")),
    Case("dataset-existing-destination", ["dataset", "{src}", "{shapes}", "-r", "8"],
         ("shapes.zip already exists", "--force")),
    Case("shapes-existing-destination", ["shapes", "{shapes}", "-n", "4", "-r", "8"],
         ("shapes.zip already exists", "--force")),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The files the cases use, and one tiny LAFITE run (snapshot + state) to resume and
    generate from."""
    import torch

    from langfree.cli import app
    from langfree.data.archive import ArchiveWriter
    from langfree.data.shapes import write_shapes

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("bad_input")
    write_shapes(root / "shapes.zip", count=32, resolution=8, seed=0)
    with ArchiveWriter(root / "images.zip", resolution=8) as w:  # no captions
        for i in range(16):
            w.add(np.full((8, 8, 3), i * 10, np.uint8))
    buf = io.BytesIO()
    Image.fromarray(np.full((512, 512, 3), 90, np.uint8)).save(buf, format="PNG")
    with zipfile.ZipFile(root / "photos.zip", "w") as z:  # a zip of one photo
        z.writestr("holiday/beach.png", buf.getvalue())
    with zipfile.ZipFile(root / "big.zip", "w") as z:  # the official layout, at 512 px
        z.writestr("00000/img00000000.png", buf.getvalue())
    (root / "notes.txt").write_text("Lafite readme\n")
    (root / "src").mkdir()
    for i in range(3):
        Image.new("RGB", (20, 20), (i * 60, 0, 0)).save(root / "src" / f"{i}.png")
    for name in ("empty_dir", "ro", "ro_probe"):
        (root / name).mkdir()
    (root / "ro_probe").chmod(0o555)
    tiny_small_clip(root / "clip", embed_dim=16, image_size=8)
    _other_small_clip(root / "clip2")
    result = CliRunner().invoke(app, [*TRAIN, "--data", str(root / "shapes.zip"), "--encoder",
                                      str(root / "clip"), "--outdir", str(root / "runs")])
    assert result.exit_code == 0, result.output
    yield root
    for name in ("ro", "ro_probe"):
        (root / name).chmod(0o755)


def _other_small_clip(path: Path) -> None:
    """The helpers' tiny small CLIP with other weights (so other features, another sidecar)."""
    import json

    import torch

    from langfree.encoders.small_clip import build_model, save_small_clip

    tiny_small_clip(path)
    cfg = json.loads((path / "encoder.json").read_text())["model_cfg"]
    torch.manual_seed(1)
    save_small_clip(build_model(cfg), cfg, path)


def _tree(root: Path) -> dict[str, tuple]:
    """Every path under root with its size, mtime and content digest (files)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_dir():
            out[rel] = ("dir",)
        else:
            st = path.stat()
            out[rel] = (st.st_size, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def _fill(text: str, world: Path) -> str:
    (run,) = (world / "runs").iterdir()
    names = {"world": world, "run": run, "new": world / "new",
             **{p.stem if p.suffix else p.name: p for p in world.iterdir()}}
    return text.format(**{k: str(v) for k, v in names.items()})


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_and_changes_nothing(case, world, monkeypatch):
    from langfree.cli import app

    if case.skip is not None and (reason := case.skip(world)):
        pytest.skip(reason)
    args = [_fill(a, world) for a in case.args]
    before = _tree(world)
    undo = case.fault(monkeypatch, world) if case.fault is not None else None
    try:
        result = CliRunner().invoke(app, args)
    finally:
        if undo is not None:
            undo()
    output = result.output
    assert result.exit_code == case.code, output
    assert isinstance(result.exception, SystemExit), f"raised {result.exception!r}:\n{output}"
    assert "Traceback" not in output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for name in case.names:
        assert _fill(name, world) in errors[0], errors[0]
    assert _tree(world) == before, "the invocation created or changed files"
