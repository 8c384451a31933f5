"""Atomic file writes: everything langfree writes goes to a temp name beside the target and is
renamed onto it only when complete, so an interrupted run never leaves a half-written file in
place of a good one."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` then rename ``tmp`` onto ``path``; the temp file never outlives a
    failure. The temp name keeps ``path``'s suffix (PIL picks the image format from it)."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_json(path: str | os.PathLike, data: Any, indent: int = 2) -> Path:
    text = json.dumps(data, indent=indent, default=str) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def check_writable(folder: str | os.PathLike, option: str) -> None:
    """Raise PermissionError/OSError naming ``option`` and ``folder`` unless a file can be
    created in ``folder`` (or, when it does not exist yet, in its nearest existing parent).
    Tries a real write: ``os.access`` says yes to root on a read-only mount. Creates nothing
    that outlives the call."""
    folder = Path(folder)
    base = next((d for d in (folder, *folder.parents) if d.exists()), Path("."))
    if not base.is_dir():
        raise NotADirectoryError(f"{option} {folder}: {base} is a file, not a folder; choose "
                                 "another folder")
    probe = base / f".langfree-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
    except OSError as exc:
        raise type(exc)(f"{option} {folder}: cannot write in {base} ({exc.strerror}); "
                        "choose a writable folder") from None
    finally:
        probe.unlink(missing_ok=True)
