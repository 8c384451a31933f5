"""The langfree image archive: one uncompressed zip of same-size RGB PNGs plus ``dataset.json``.

Layout (StyleGAN2-ADA compatible, so official tools can read it too)::

    00000/img00000000.png ... 00000/img00000999.png, 00001/img00001000.png, ...
    dataset.json  {"format": "langfree-archive", "version": 1, "resolution": R, "count": N,
                   "images": [{"file", "source", "captions": [...], "attributes"?: {...}}],
                   "labels": null}

``ArchiveWriter`` is the only code that writes archives (the dataset tool and the shapes generator
both use it); ``ImageArchive`` reads them, and also reads official LAFITE / StyleGAN2-ADA zips
(PNG tree + their own dataset.json) as image-only data.

torch is imported lazily so that writing an archive (``langfree shapes``, ``langfree dataset``)
does not pay torch's start-up time.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
from PIL import Image

FORMAT = "langfree-archive"
VERSION = 1
METADATA = "dataset.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# Member names of the official LAFITE / StyleGAN2-ADA dataset tools (read as image-only data).
_OFFICIAL_NAME = re.compile(r"\d{5}/img\d{8}\.png")
# A fixed timestamp makes archives byte-identical for identical inputs (same seed -> same file).
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class ArchiveError(ValueError):
    """A missing, corrupt or unreadable image archive; the message names the file and the fix."""


def archive_name(index: int) -> str:
    """StyleGAN2-ADA member name for image ``index``: 1000 images per folder."""
    return f"{index // 1000:05d}/img{index:08d}.png"


def encode_png(image: np.ndarray, compress_level: int = 1) -> bytes:
    """uint8 [H, W, 3] -> PNG bytes.

    zlib level 1: PNG encoding dominates the dataset tool at 256 px, and level 1 is ~2.5x faster
    than level 4 (5x than the default 6) for ~10 % larger files (measured on 256 px photos).
    """
    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


class ArchiveWriter:
    """Write an archive atomically: a temp file beside ``dest``, renamed onto it only on success.

    Use as a context manager; an exception inside the ``with`` block removes the temp file and
    leaves any existing ``dest`` untouched::

        with ArchiveWriter(dest, resolution=32, source="shapes") as w:
            w.add(image_uint8_hwc, captions=["a red circle"], source="shapes/0")
    """

    def __init__(self, dest: str | os.PathLike, resolution: int, source: str | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        self.dest = Path(dest)
        self.resolution = int(resolution)
        self.source = source
        self.extra = dict(extra or {})
        self.tmp = self.dest.with_name(f"{self.dest.name}.tmp-{os.getpid()}")
        self.records: list[dict[str, Any]] = []
        self._zip: zipfile.ZipFile | None = None

    def __enter__(self) -> Self:
        if self.dest.exists() and self.dest.is_dir():
            raise ArchiveError(f"{self.dest} is a directory; give a .zip file name as destination")
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self._zip = zipfile.ZipFile(self.tmp, "w", compression=zipfile.ZIP_STORED)
        return self

    def add(self, image: np.ndarray | bytes, captions: Sequence[str] = (), source: str = "",
            attributes: dict | None = None) -> int:
        """Append one image (uint8 [R, R, 3] array, or PNG bytes already encoded). Returns its index."""
        if self._zip is None:
            raise RuntimeError("ArchiveWriter.add called outside its 'with' block")
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.shape != (self.resolution, self.resolution, 3):
                raise ValueError(f"expected uint8 [{self.resolution}, {self.resolution}, 3], "
                                 f"got {image.dtype} {list(image.shape)}")
            image = encode_png(image)
        index = len(self.records)
        name = archive_name(index)
        self._zip.writestr(zipfile.ZipInfo(name, date_time=_ZIP_DATE), image)
        record: dict[str, Any] = {"file": name, "source": source, "captions": list(captions)}
        if attributes is not None:
            record["attributes"] = attributes
        self.records.append(record)
        return index

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._zip is not None
        try:
            if exc_type is None:
                meta = {"format": FORMAT, "version": VERSION, "resolution": self.resolution,
                        "count": len(self.records), "source": self.source, **self.extra,
                        "images": self.records, "labels": None}
                info = zipfile.ZipInfo(METADATA, date_time=_ZIP_DATE)
                self._zip.writestr(info, json.dumps(meta, indent=1, ensure_ascii=False))
            self._zip.close()
            if exc_type is None:
                os.replace(self.tmp, self.dest)
        finally:
            self._zip = None
            if self.tmp.exists():  # failure anywhere above: never leave a partial file behind
                self.tmp.unlink()


def captioned_indices(archive: Any) -> list[int]:
    """Indices of the images of ``archive`` (anything with ``len`` and ``captions(i)``) that
    have at least one caption: what caption-trained parts use of a partly captioned archive."""
    return [i for i in range(len(archive)) if archive.captions(i)]


class ImageArchive:
    """Read an archive as a map-style torch dataset (works with ``torch.utils.data.DataLoader``).

    ``a[key]`` -> ``{"image": uint8 [3, H, W], "index": key % len(a)}``; keys past ``len(a)``
    wrap around, so the loop's keys ``epoch * N + i`` map onto images. ``preload=True`` decodes
    every image once into one uint8 [N, H, W, 3] array (the fast path for small archives).
    The zip handle is opened per process, so DataLoader workers each get their own.
    """

    def __init__(self, path: str | os.PathLike, preload: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ArchiveError(f"image archive {self.path} not found; create one with "
                               "'langfree dataset SRC DEST.zip' or 'langfree shapes DEST.zip'")
        self._zip: zipfile.ZipFile | None = None
        self._zip_pid = -1
        try:
            names = set(self._open().namelist())
        except (zipfile.BadZipFile, OSError) as e:
            raise ArchiveError(f"{self.path} is not a readable zip archive ({e}); "
                               "rebuild it with 'langfree dataset'") from e
        meta = self._read_metadata(names)
        if meta.get("format") == FORMAT:
            self._records = self._langfree_records(meta, names)
            self.resolution = int(meta["resolution"])
        else:  # official LAFITE / StyleGAN2-ADA zip: image-only, labels and features ignored
            files = sorted(n for n in names if n.lower().endswith(IMAGE_SUFFIXES))
            if not files:
                raise ArchiveError(f"{self.path} holds no images; rebuild it with 'langfree dataset'")
            self._refuse_foreign(files, meta)
            self._records = [{"file": f, "source": f, "captions": []} for f in files]
            self.resolution = self._decode(files[0]).shape[0]
        self.has_captions = all(len(r["captions"]) > 0 for r in self._records)
        self._images: np.ndarray | None = None
        if preload:
            self._images = np.stack([self._decode(r["file"]) for r in self._records])

    # -- reading ------------------------------------------------------------------------------
    def _open(self) -> zipfile.ZipFile:
        if self._zip is None or self._zip_pid != os.getpid():
            self._zip = zipfile.ZipFile(self.path)
            self._zip_pid = os.getpid()
        return self._zip

    def _read_metadata(self, names: set[str]) -> dict:
        if METADATA not in names:
            return {}
        try:
            meta = json.loads(self._open().read(METADATA))
        except (ValueError, zipfile.BadZipFile, OSError) as e:
            raise ArchiveError(f"{self.path}: {METADATA} is corrupt ({e}); rebuild the archive") from e
        return meta if isinstance(meta, dict) else {}

    def _refuse_foreign(self, files: list[str], meta: dict) -> None:
        """A zip that is neither a langfree archive nor in the official LAFITE / StyleGAN2-ADA
        layout (``00000/img00000000.png``, written by their dataset tools) holds images of any
        size and name: refuse it with the command that converts it, instead of guessing the
        resolution from its first image."""
        if "labels" in meta or all(_OFFICIAL_NAME.fullmatch(f) for f in files):
            return
        dest = self.path.with_name(f"{self.path.stem}-archive.zip")
        raise ArchiveError(
            f"{self.path} is not a langfree archive (a zip of {len(files)} image(s), e.g. "
            f"{files[0]}, without langfree's {METADATA}); convert it with 'langfree dataset "
            f"{self.path} {dest} --resolution R' (R a power of two, e.g. 64)")

    def _langfree_records(self, meta: dict, names: set[str]) -> list[dict]:
        version = meta.get("version")
        if version != VERSION:
            raise ArchiveError(f"{self.path}: archive version {version} is not supported "
                               f"(this langfree reads version {VERSION}); rebuild the archive")
        records = meta.get("images")
        if not isinstance(records, list) or not records:
            raise ArchiveError(f"{self.path} holds no images; rebuild it with 'langfree dataset'")
        missing = [r.get("file") for r in records if r.get("file") not in names]
        if missing:
            raise ArchiveError(f"{self.path} is incomplete: {len(missing)} images listed in "
                               f"{METADATA} are absent (first: {missing[0]}); rebuild the archive")
        return records

    def _decode(self, name: str) -> np.ndarray:
        try:
            with Image.open(io.BytesIO(self._open().read(name))) as im:
                image = np.asarray(im.convert("RGB"))
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise ArchiveError(f"{self.path}: image {name} is corrupt ({e}); rebuild the archive") from e
        if image.shape[0] != image.shape[1] or (hasattr(self, "resolution")
                                                and image.shape[0] != self.resolution):
            raise ArchiveError(f"{self.path}: image {name} is {image.shape[1]}x{image.shape[0]}, "
                               "expected square images of one size; rebuild with 'langfree dataset'")
        return image

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_zip"] = None  # zip handles do not cross process boundaries
        return state

    # -- public API ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._records)

    def captions(self, i: int) -> list[str]:
        return list(self._records[i]["captions"])

    def attributes(self, i: int) -> dict | None:
        return self._records[i].get("attributes")

    def source(self, i: int) -> str:
        return self._records[i].get("source", "")

    def image(self, i: int) -> np.ndarray:
        """uint8 [H, W, 3]."""
        if self._images is not None:
            return self._images[i]
        return self._decode(self._records[i]["file"])

    def images(self, indices: Iterable[int]) -> Any:
        """torch.uint8 [N, 3, H, W]."""
        import torch

        indices = list(indices)
        if self._images is not None:
            batch = self._images[np.asarray(indices, dtype=np.int64)]
        elif indices:
            batch = np.stack([self.image(i) for i in indices])
        else:
            batch = np.zeros((0, self.resolution, self.resolution, 3), np.uint8)
        return torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))

    def __getitem__(self, key: int) -> dict:
        import torch

        index = int(key) % len(self)
        image = np.ascontiguousarray(self.image(index).transpose(2, 0, 1))  # [3, H, W]
        return {"image": torch.from_numpy(image), "index": index}

    def __repr__(self) -> str:
        return (f"ImageArchive({str(self.path)!r}, n={len(self)}, resolution={self.resolution}, "
                f"captions={self.has_captions})")
