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
