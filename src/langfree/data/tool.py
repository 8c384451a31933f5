"""The dataset tool: images (+ optional captions) -> one langfree archive (see archive.py).

Sources, detected automatically:
- a folder, searched recursively; captions for ``X.jpg`` come from ``X.txt`` beside it, one per line;
- a zip file laid out the same way;
- the COCO layout: ``train2014/`` and/or ``val2014/`` plus ``annotations/captions_<split>.json``
  (any ``annotations/captions_<split>.json`` with a ``<split>/`` folder beside it, so 2017 works).

Every file either becomes an image or is named in the report with the reason it was skipped;
conversions (16-bit, transparency, CMYK, EXIF rotation, upscaling) never cost an image. Decoding
and resizing run in worker processes; the archive is written atomically by ``ArchiveWriter``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from langfree.data.archive import ArchiveWriter, encode_png
from langfree.data.images import (
    TRANSFORMS,
    SkipImage,
    decode_caption_file,
    fit,
    open_image,
)

CAPTION_SUFFIX = ".txt"
_NOT_CANDIDATES = {CAPTION_SUFFIX, ".json"}  # caption files and metadata are not images


class DatasetError(ValueError):
    """The source cannot produce an archive; the message names the input and what to do."""


@dataclass(frozen=True)
class Item:
    """One candidate image. ``zip_path`` set: ``path``/``caption`` are members of that zip."""

    source: str                   # path relative to the source root, recorded in dataset.json
    path: str
    caption: str | None = None    # caption file beside the image, if any
    captions: tuple[str, ...] | None = None  # captions known up front (COCO)
    zip_path: str | None = None


@dataclass
class Result:
    source: str
    png: bytes | None = None
    captions: list[str] = field(default_factory=list)
    reason: str | None = None     # skip category (None: image kept)
    detail: str = ""
    warnings: list[str] = field(default_factory=list)
    upscaled: bool = False


@dataclass
class Report:
    dest: Path | None
    written: int
    resolution: int
    skipped: list[tuple[str, str]]       # (source, "reason: detail")
    skip_counts: dict[str, int]
    warnings: list[tuple[str, str]]      # (source, message)
    upscaled: int
    with_captions: int

    def summary(self) -> str:
        size = f"{self.resolution}x{self.resolution}"
        lines = [f"wrote {self.written} images ({size}, {self.with_captions} with captions) to {self.dest}"]
        if self.upscaled:
            lines.append(f"upscaled {self.upscaled} images smaller than {self.resolution} px "
                         "(use --min-size to skip them instead)")
        for source, message in self.warnings:
            lines.append(f"warning: {source}: {message}")
        if self.skipped:
            counts = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skip_counts.items()))
            lines.append(f"skipped {len(self.skipped)} files ({counts}):")
            lines += [f"  {source}: {reason}" for source, reason in self.skipped]
        return "\n".join(lines)


# -- finding the images ----------------------------------------------------------------------
def _is_candidate(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return bool(base) and not base.startswith(".") and os.path.splitext(base)[1].lower() not in _NOT_CANDIDATES


def _coco_splits(root: Path) -> list[tuple[Path, Path]]:
    """(image folder, captions json) pairs of a COCO-style root, [] if it is not one."""
    annotations = root / "annotations"
    if not annotations.is_dir():
        return []
    pairs = []
    for ann in sorted(annotations.glob("captions_*.json")):
        folder = root / ann.stem.removeprefix("captions_")
        if folder.is_dir():
            pairs.append((folder, ann))
    return pairs


def _coco_items(root: Path, pairs: list[tuple[Path, Path]], warnings: list) -> list[Item]:
    items = []
    for folder, ann in pairs:
        try:
            meta = json.loads(ann.read_bytes())
            names = {img["id"]: img["file_name"] for img in meta["images"]}
            by_name: dict[str, list[str]] = {name: [] for name in names.values()}
            for a in meta["annotations"]:
                if a.get("image_id") in names:  # a caption of an unlisted image has no file
                    by_name[names[a["image_id"]]].append(str(a["caption"]).strip())
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DatasetError(f"{ann} is not a readable COCO captions file ({e!r}); "
                               "fix or remove it") from e
        on_disk = set()
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and _is_candidate(p.name)):
            on_disk.add(path.name)
            captions = tuple(c for c in by_name.get(path.name, ()) if c)
            items.append(Item(path.relative_to(root).as_posix(), str(path), captions=captions))
        missing = len(set(by_name) - on_disk)
        if missing:
            warnings.append((ann.name, f"{missing} images it lists are missing from {folder.name}/"))
    return items


def _folder_items(root: Path, exclude: set[Path]) -> list[Item]:
    # Hidden folders (.git, .cache) are not part of the data; nor is our own output.
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.resolve() not in exclude
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    captions = {p.with_suffix(""): str(p) for p in files if p.suffix.lower() == CAPTION_SUFFIX}
    return [Item(p.relative_to(root).as_posix(), str(p), caption=captions.get(p.with_suffix("")))
            for p in files if _is_candidate(p.name)]


def _zip_items(src: Path) -> list[Item]:
    try:
        with zipfile.ZipFile(src) as z:
            names = sorted(n for n in z.namelist() if not n.endswith("/") and not n.startswith("__MACOSX/"))
    except (zipfile.BadZipFile, OSError) as e:
        raise DatasetError(f"{src} is not a readable zip file ({e}); give a folder or a valid zip") from e
    texts = {os.path.splitext(n)[0]: n for n in names if os.path.splitext(n)[1].lower() == CAPTION_SUFFIX}
    return [Item(n, n, caption=texts.get(os.path.splitext(n)[0]), zip_path=str(src))
            for n in names if _is_candidate(n)]


def find_items(src: Path, exclude: set[Path] = frozenset(), warnings: list | None = None) -> list[Item]:
    """Every candidate image of ``src`` in a fixed (sorted) order."""
    warnings = [] if warnings is None else warnings
    if src.is_dir():
        pairs = _coco_splits(src)
        return _coco_items(src, pairs, warnings) if pairs else _folder_items(src, set(exclude))
    if src.is_file():
        if zipfile.is_zipfile(src):
            return _zip_items(src)
        raise DatasetError(f"{src} is neither a folder nor a zip file; give a folder of images "
                           "(captions as X.txt beside X.jpg), a zip of one, or a COCO root")
    raise DatasetError(f"source {src} does not exist")


# -- converting one image (runs in worker processes) -----------------------------------------
# One open handle per (process, source zip): reopening would re-read the central directory for
# every image, and a handle inherited through fork shares its file offset with the parent.
_zip_handles: dict[tuple[int, str], zipfile.ZipFile] = {}


def _read(item: Item, name: str) -> bytes:
    if item.zip_path is None:
        with open(name, "rb") as f:
            return f.read()
    key = (os.getpid(), item.zip_path)
    handle = _zip_handles.get(key)
    if handle is None:
        handle = _zip_handles[key] = zipfile.ZipFile(item.zip_path)
    return handle.read(name)


def _close_zip_handles() -> None:
    for key in [k for k in _zip_handles if k[0] == os.getpid()]:
        _zip_handles.pop(key).close()


def convert_item(item: Item, resolution: int, transform: str, min_size: int | None) -> Result:
    """Never raises: every failure becomes a skip reason in the Result."""
    result = Result(item.source)
    try:
        try:
            data = _read(item, item.path)
        except (OSError, zipfile.BadZipFile, KeyError) as e:
            raise SkipImage("unreadable file", str(e)) from e
        im, (w, h) = open_image(data, resolution, min_size, notes=result.warnings)
        image = fit(im, resolution, transform)
        result.upscaled = min(w, h) < resolution
        result.png = encode_png(image)
    except SkipImage as e:
        result.reason, result.detail = e.reason, e.detail
        return result
    except Exception as e:  # noqa: BLE001 - a decoder bug on one file must not stop the run
        result.reason, result.detail = "unreadable image", f"{type(e).__name__}: {e}"
        return result
    if item.captions is not None:
        result.captions = list(item.captions)
    elif item.caption is not None:
        try:
            result.captions, warning = decode_caption_file(_read(item, item.caption))
        except (OSError, zipfile.BadZipFile, KeyError) as e:
            warning = f"caption file unreadable ({e}); image kept without captions"
        if warning:
            result.warnings.append(warning)
    return result


@contextmanager
def closing_zip_handles() -> Iterator[None]:
    try:
        yield
    finally:
        _close_zip_handles()


def _convert_star(args: tuple) -> Result:
    return convert_item(*args)


def _results(items: list[Item], resolution: int, transform: str, min_size: int | None,
             workers: int) -> Iterator[Result]:
    """Converted items in input order (so the archive does not depend on ``workers``)."""
    jobs = [(item, resolution, transform, min_size) for item in items]
    if workers <= 1 or len(items) < 16:
        yield from map(_convert_star, jobs)
        return
    # fork where available: spawn/forkserver workers re-import the caller's __main__ (for the
    # CLI that is every command module, torch included: seconds per worker). Workers use only
    # PIL and numpy, and zip handles are per process (_read), so a forked copy is safe.
    # ProcessPoolExecutor, not multiprocessing.Pool: a worker killed by a decoder crash raises
    # BrokenProcessPool instead of hanging the run forever.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        try:
            yield from pool.map(_convert_star, jobs, chunksize=8)
        except BrokenProcessPool as e:
            raise DatasetError("a decoding process died (a decoder crash on some file); "
                               "rerun with --workers 1 to see which file") from e
        finally:  # early stop (--max-images, an error): drop the queued work
            pool.shutdown(wait=True, cancel_futures=True)


def check_resolution(resolution: int, option: str = "--resolution") -> None:
    """Image families halve the image down to 4 px (StyleGAN blocks, VAE/VQGAN downsampling,
    DiT patches), so an archive's side must be a power of two; checked here, where the size is
    chosen, not when training fails later."""
    if resolution < 4 or resolution & (resolution - 1):
        lower = 1 << max(2, resolution.bit_length() - 1)
        choice = f"{lower} or {2 * lower}" if resolution > 4 else "4"
        raise DatasetError(f"{option} {resolution}: the image side must be a power of two >= 4 "
                           f"(the networks halve it down to 4 px); use {choice}")


# -- the tool --------------------------------------------------------------------------------
def build_dataset(src: str | os.PathLike, dest: str | os.PathLike, resolution: int,
                  transform: str = "center-crop", max_images: int | None = None,
                  min_size: int | None = None, workers: int | None = None,
                  progress: Callable[[int, int], None] | None = None) -> Report:
    """Convert ``src`` into the archive ``dest``. Raises DatasetError (and writes nothing) when
    the arguments are wrong or no file of ``src`` is a usable image.

    ``progress(done, total)`` is called as files are processed (the CLI's progress bar).
    """
    src, dest = Path(src), Path(dest)
    if transform not in TRANSFORMS:
        raise DatasetError(f"unknown transform {transform!r}; choose one of {', '.join(TRANSFORMS)}")
    check_resolution(resolution)
    if max_images is not None and max_images < 1:
        raise DatasetError(f"--max-images must be >= 1, got {max_images}")
    workers = workers or min(2, os.cpu_count() or 1)
    warnings: list[tuple[str, str]] = []
    own = dest.resolve()
    exclude = {own} | set(own.parent.glob(f"{own.name}.tmp-*"))  # earlier interrupted runs
    items = find_items(src, exclude=exclude, warnings=warnings)
    if not items:
        raise DatasetError(f"no image files found in {src}; nothing written")

    skipped: list[tuple[str, str]] = []
    counts: Counter[str] = Counter()
    upscaled = with_captions = 0
    results = _results(items, resolution, transform, min_size, workers)
    with closing_zip_handles(), ArchiveWriter(dest, resolution, source=str(src.resolve()),
                       extra={"transform": transform}) as writer, closing(results):
        for done, r in enumerate(results, 1):
            if r.png is None:
                skipped.append((r.source, f"{r.reason}: {r.detail}" if r.detail else r.reason))
                counts[r.reason] += 1
            else:
                writer.add(r.png, captions=r.captions, source=r.source)
                upscaled += r.upscaled
                with_captions += bool(r.captions)
            warnings += [(r.source, w) for w in r.warnings]
            if progress is not None:
                progress(done, len(items))
            if max_images is not None and len(writer.records) >= max_images:
                break
        if not writer.records:
            reasons = ", ".join(f"{n} {reason}" for reason, n in counts.most_common())
            raise DatasetError(f"no usable image in {src} ({len(items)} files: {reasons}); nothing written")
        writer.extra["skipped"] = [{"source": s, "reason": r} for s, r in skipped]
        written = len(writer.records)
    return Report(dest, written, resolution, skipped, dict(counts), warnings, upscaled, with_captions)
