"""Dataset tool throughput: images/s at 64 and 256 px with 1 and 2 worker processes.

Builds a folder of photo-sized JPEGs (Shapes scenes upscaled to 320-640 px with a gradient and
noise so JPEG decoding costs what it costs on photos), with one caption file per image.

    .venv/bin/python benchmarks/dataset_tool.py [--count 500] [--keep DIR]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from langfree.data.shapes import draw_one
from langfree.data.tool import build_dataset


def make_folder(folder: Path, count: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(count):
        image, captions, _ = draw_one(seed, i, 64)
        w, h = (int(v) for v in rng.integers(320, 641, 2))
        big = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BICUBIC), np.float32)
        big += np.linspace(-20, 20, w)[None, :, None] + rng.normal(0, 6, (h, w, 3))
        Image.fromarray(np.clip(big, 0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)
        (folder / f"{i:05d}.txt").write_text("\n".join(captions))


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--keep", type=Path, default=None, help="build the JPEG folder here and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp) / "jpegs"
        folder.mkdir(parents=True, exist_ok=True)
        if not any(folder.glob("*.jpg")):
            t0 = time.perf_counter()
            make_folder(folder, args.count)
            print(f"made {args.count} JPEGs (320-640 px) in {time.perf_counter() - t0:.1f} s")
        for resolution in (64, 256):
            for workers in (1, 2):
                t0, c0 = time.perf_counter(), _cpu_seconds()
                report = build_dataset(folder, Path(tmp) / "out.zip", resolution, workers=workers)
                dt, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
                line = (f"resolution {resolution:3d}  workers {workers}: {report.written / dt:7.1f} images/s "
                        f"({report.written} images, {dt:.2f} s wall")
                # Images per CPU-second does not depend on what else the machine runs; worker
                # processes are children of the forkserver, so only workers=1 can be timed so.
                print(line + (f", {report.written / cpu:.0f} images per CPU-s)" if workers == 1 else ")"))


if __name__ == "__main__":
    main()
