"""Helpers of the serve tests: a tiny family with a slow option (so a cancel and a full queue can
be seen), a run directory of its snapshots, and a server on a free 127.0.0.1 port."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import torch

from langfree.families.spec import TrainSpec
from tiny_family import TinyConfig, TinyDenoiser

os.environ.update({"HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
                   "HF_HUB_DISABLE_TELEMETRY": "1", "NO_PROXY": "127.0.0.1,localhost",
                   "no_proxy": "127.0.0.1,localhost"})


@dataclass(frozen=True)
class ServeTinyOptions:
    """Options of every kind the UI builds a control for (float, str choice, bool)."""

    noise_scale: float = field(default=1.0, metadata={"min": 0.0, "max": 4.0,
                                                      "help": "Multiplies the starting noise."})
    delay: float = field(default=0.0, metadata={"min": 0.0, "max": 2.0,
                                                "help": "Seconds of sleep per image (tests)."})
    channel: str = field(default="rgb", metadata={"choices": ["rgb", "bgr"],
                                                  "help": "Channel order of the output."})
    invert: bool = field(default=False, metadata={"help": "Negate the image."})


class ServeTiny(TinyDenoiser):
    """The tiny denoiser with options of every kind; its guidance "reads" a negative prompt."""

    name = "tiny_serve"
    SampleOptions = ServeTinyOptions
    uses_negative_prompt = True

    @torch.no_grad()
    def sample(self, conditions, seeds, options=None):
        o = options or ServeTinyOptions()
        time.sleep(o.delay * len(seeds))
        from tiny_family import TinySampleOptions

        x = super().sample(conditions, seeds, TinySampleOptions(noise_scale=o.noise_scale))
        if o.channel == "bgr":
            x = x.flip(1)
        return -x if o.invert else x


SPEC = TrainSpec(name="tiny_serve", family="test_serve_helpers:ServeTiny",
                 config="tiny_family:TinyConfig", help="Serve test family.", encoder="required")


def register(monkeypatch) -> None:
    from langfree.families import registry

    monkeypatch.setitem(registry._FAMILIES, "tiny_serve", "test_serve_helpers:SPEC")


def make_run(root: Path) -> Path:
    """A run dir with two snapshots of ServeTiny (recording a 4-d tiny small-CLIP), a
    stats.jsonl and a metrics.jsonl."""
    from langfree.checkpoint import save_snapshot
    from langfree.encoders import load_encoder
    from test_lafite_family_helpers import tiny_small_clip

    clip = tiny_small_clip(root / "clip", embed_dim=4, image_size=8)
    encoder = load_encoder(str(clip))
    run = root / "00000-tiny_serve"
    torch.manual_seed(0)
    family = ServeTiny(TinyConfig(), encoder)
    for kimg in (0.01, 0.02):
        grid = torch.rand(4, 3, 8, 8) * 2 - 1
        save_snapshot(run / "snapshots" / f"snapshot-{kimg:010.3f}", family, kimg, grid=grid)
    (run / "config.json").write_text(json.dumps({"family": "tiny_serve"}))
    with open(run / "stats.jsonl", "w") as f:
        for tick in range(1, 6):
            f.write(json.dumps({"Progress/tick": tick, "Progress/kimg": tick * 0.004,
                                "Loss/main/loss": 1.0 / tick, "Loss/main/pred_std": 0.1}) + "\n")
    with open(run / "metrics.jsonl", "w") as f:
        for kimg in (0.01, 0.02):
            f.write(json.dumps({"metric": "fid50k_full", "value": 300 - kimg * 1000,
                                "kimg": kimg, "snapshot": f"snapshot-{kimg:010.3f}"}) + "\n")
    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, timeout: float = 60.0) -> None:
    """Poll /gradio_api/info until the server answers (a bound on waiting, not on speed)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/gradio_api/info", timeout=5) as r:
                if r.status == 200:
                    return
        except urllib.error.HTTPError:
            return  # it answers (e.g. 401 behind --auth)
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


@contextlib.contextmanager
def running(settings):
    """A ServeApp of ``settings`` listening on 127.0.0.1 (settings.port must be set)."""
    from langfree.serve.app import ServeApp

    app = ServeApp(settings)
    demo = app.launch(block=False)
    url = f"http://127.0.0.1:{settings.port}"
    try:
        wait_up(url)
        yield app, demo, url
    finally:
        demo.close()
