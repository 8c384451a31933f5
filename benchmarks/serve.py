"""``langfree serve`` throughput and latency on this CPU: requests/s and median / p95 latency at
1, 4 and 16 concurrent gradio_client clients on a tiny snapshot, against calling what
``langfree generate`` calls (build_conditions + generate_grid) directly in the same run.

    python benchmarks/serve.py [--requests 32] [--images 4] [--threads 1] [--clients 1 4 16]

The snapshot is the serve tests' ``tiny_serve`` family (tests/test_serve_helpers.py: an MLP
denoiser on 8x8 images with a random-weight 4-d small-CLIP), written to a temporary directory,
so the figures measure the server's own cost (gradio queue, HTTP, PNG encoding and download)
rather than a network's. The server runs in this process on a free 127.0.0.1 port with the
``langfree serve`` defaults (--concurrency 1, --batch 4) and a queue large enough that no
request is refused (refusals would be counted and printed). Every connection of this process
to anything but the loopback address is refused.

Direct latency = median wall time of build_conditions + generate_grid with the family already
loaded (the server keeps it in its model cache too); the load time is printed apart. Overhead
ratio = served median latency / direct median latency; with one server slot, latency at N
clients includes the wait in the queue, so requests/s is the figure to compare there.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

os.environ.update({"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1",
                   "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1",
                   "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"})

TESTS = Path(__file__).resolve().parent.parent / "tests"
PROMPT = "a red circle"
SEED = 0
LOCAL = ("127.0.0.1", "localhost", "::1")


def local_only() -> None:
    """Refuse (loudly) any connection or name lookup of this process that is not loopback."""
    connect, lookup = socket.socket.connect, socket.getaddrinfo

    def guarded_connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOCAL:
            raise OSError(f"benchmarks/serve.py: outbound connection to {address} refused")
        return connect(sock, address)

    def guarded_lookup(host, *args, **kwargs):
        if host is not None and host not in LOCAL:
            raise OSError(f"benchmarks/serve.py: lookup of {host} refused")
        return lookup(host, *args, **kwargs)

    socket.socket.connect = guarded_connect
    socket.getaddrinfo = guarded_lookup


def tiny_snapshot(root: Path) -> Path:
    """The serve tests' tiny_serve run; returns its latest snapshot directory."""
    sys.path[:0] = [str(TESTS)]
    from langfree.families import registry

    registry._FAMILIES["tiny_serve"] = "test_serve_helpers:SPEC"
    import test_serve_helpers as H

    run = H.make_run(root)
    return sorted((run / "snapshots").glob("snapshot-*"))[-1]


def direct_latencies(snapshot: Path, images: int, repeats: int) -> tuple[float, list[float]]:
    """(load seconds, per-call seconds) of load_snapshot + build_conditions + generate_grid."""
    from langfree.checkpoint import load_snapshot
    from langfree.sampling.conditions import build_conditions, parse_sample_options
    from langfree.sampling.generate import generate_grid

    t0 = time.perf_counter()
    family = load_snapshot(snapshot, encoder="auto")
    load = time.perf_counter() - t0
    options = parse_sample_options(family, [])
    seeds = list(range(SEED, SEED + images))

    def call():
        conditions = build_conditions(family.encoder, [PROMPT], [], None)
        return generate_grid(family, conditions, seeds, options)

    call()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        ts.append(time.perf_counter() - t0)
    return load, ts


def served(url: str, label: str, values: list, images: int, requests: int, clients: int,
           downloads: Path) -> tuple[float, list[float], int, list[str]]:
    """``requests`` calls of /generate spread over ``clients`` threads, one Client each ->
    (wall seconds, latencies of the answered ones, refused count, other errors)."""
    from gradio_client import Client

    from langfree.serve.safety import BUSY_MESSAGE

    pool = [Client(url, analytics_enabled=False, verbose=False,
                   download_files=str(downloads / f"c{clients}-{i}")) for i in range(clients)]
    todo = iter(range(requests))
    lock = threading.Lock()
    latencies: list[float] = []
    refused: list[int] = []
    errors: list[str] = []

    def worker(client):
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            t0 = time.perf_counter()
            try:
                # a seed of its own per request: identical images of concurrent requests share
                # one file in gradio's cache, rewritten while another response streams it
                gallery, _, status = client.predict(label, PROMPT, "", SEED + i * images,
                                                    images, None,
                                                    *values, api_name="/generate")
                dt = time.perf_counter() - t0
                if len(gallery) != images or not str(status).startswith("Done"):
                    raise RuntimeError(f"unexpected answer: {len(gallery)} images, {status!r}")
                with lock:
                    latencies.append(dt)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                with lock:
                    (refused.append(i) if BUSY_MESSAGE in str(exc)
                     else errors.append(f"{type(exc).__name__}: {exc}"))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex:
        list(ex.map(worker, pool))
    wall = time.perf_counter() - t0
    for c in pool:
        close = getattr(c, "close", None)
        if close is not None:
            close()
    return wall, latencies, len(refused), errors


def p95(xs: list[float]) -> float:
    return float(np.percentile(xs, 95)) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    ap.add_argument("--images", type=int, default=4, help="images per request")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16],
                    help="concurrency levels (gradio_client threads)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    local_only()
    from langfree.serve.safety import Limits, quiet_environment

    quiet_environment()
    with tempfile.TemporaryDirectory(prefix="langfree-serve-bench-") as tmp:
        root = Path(tmp)
        snapshot = tiny_snapshot(root / "run")
        load, direct = direct_latencies(snapshot, args.images, max(args.requests, 8))
        d_med = statistics.median(direct)
        print(f"direct (build_conditions + generate_grid, {args.images} images): median "
              f"{d_med * 1e3:.2f} ms, p95 {p95(direct) * 1e3:.2f} ms, "
              f"{1 / d_med:.1f} calls/s; load_snapshot {load * 1e3:.1f} ms", flush=True)

        import test_serve_helpers as H
        from langfree.serve.app import ServeApp, ServeSettings

        settings = ServeSettings(paths=(str(snapshot),), host="127.0.0.1", port=H.free_port(),
                                 queue=max(32, max(args.clients)),
                                 limits=Limits(max_batch=max(16, args.images)))
        app = ServeApp(settings)
        demo = app.launch(block=False)
        url = f"http://127.0.0.1:{settings.port}"
        ratios = {}
        try:
            H.wait_up(url)
            label = app.entries[0].label
            values = [spec.default for _, spec in app.controls]
            served(url, label, values, args.images, 2, 1, root / "dl")   # warm-up: model load
            for c in args.clients:
                wall, lat, refused, errors = served(url, label, values, args.images,
                                                    args.requests, c, root / "dl")
                med = statistics.median(lat) if lat else float("nan")
                ratios[c] = med / d_med
                line = (f"{c:2d} client(s): {len(lat) / wall:7.2f} req/s, median "
                        f"{med * 1e3:8.1f} ms, p95 {p95(lat) * 1e3:8.1f} ms, overhead ratio "
                        f"{ratios[c]:7.1f}x ({len(lat)}/{args.requests} answered")
                line += f", {refused} refused" if refused else ""
                line += f", {len(errors)} errors: {errors[0]}" if errors else ""
                print(line + ")", flush=True)
        finally:
            demo.close()
    if 1 in ratios:
        print(f"overhead ratio at 1 client: {ratios[1]:.1f}")


if __name__ == "__main__":
    main()
