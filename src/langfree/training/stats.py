"""Tick statistics: averages over a tick, one human line, stats.jsonl, TensorBoard, log.txt."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch


class TickStats:
    """Sums of named scalars over a tick. Values stay tensors until ``means`` (one sync)."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            value = value.detach().float().reshape(()).to(self.device)
        else:
            value = torch.tensor(float(value), device=self.device)
        self.sums[name] = self.sums.get(name, 0) + value  # stays on device: no sync per step
        self.counts[name] = self.counts.get(name, 0) + 1

    def means(self, world: int = 1) -> dict[str, float]:
        """Averages over the tick (and over processes: keys are identical on every rank)."""
        names = sorted(self.sums)
        if not names:
            return {}
        sums = torch.stack([self.sums[n] for n in names])
        counts = torch.tensor([float(self.counts[n]) for n in names], device=sums.device)
        if world > 1:
            both = torch.cat([sums, counts])
            torch.distributed.all_reduce(both)
            sums, counts = both[: len(names)], both[len(names) :]
        self.sums, self.counts = {}, {}
        means = (sums / counts).tolist()  # the one device sync of the tick
        return dict(zip(names, means))


def format_duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s // 60 % 60:02d}m"


def memory_gb() -> tuple[float, float]:
    import psutil

    cpu = psutil.Process(os.getpid()).memory_info().rss / 2**30
    gpu = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    return cpu, gpu


def tick_line(fields: dict[str, float], losses: dict[str, float]) -> str:
    """``tick 3  kimg 12.0  time 1m 02s  sec/tick 20.1 ...`` plus per-phase loss averages."""
    parts = [
        f"tick {int(fields['tick'])}",
        f"kimg {fields['kimg']:.1f}" if fields["kimg"] >= 1 else f"kimg {fields['kimg']:.3f}",
        f"time {format_duration(fields['time'])}",
        f"sec/tick {fields['sec_per_tick']:.1f}",
        f"sec/kimg {fields['sec_per_kimg']:.2f}",
        f"maintenance {fields['maintenance']:.1f}",
        f"cpumem {fields['cpumem']:.2f}",
        f"gpumem {fields['gpumem']:.2f}",
    ]
    parts += [f"{name.removesuffix('/loss')} {value:.4g}" for name, value in losses.items()]
    return "  ".join(parts)


class Reporter:
    """Rank-0 outputs of a run dir. Other ranks get a Reporter with ``run_dir=None`` (silent)."""

    def __init__(self, run_dir: Path | None, total_nimg: int, start_nimg: int):
        self.run_dir = run_dir
        self.tb = None
        self.bar = None
        if run_dir is None:
            return
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        self.tb = SummaryWriter(str(run_dir))
        # disable=None: a bar on terminals only, so logs of batch jobs stay clean
        self.bar = tqdm(
            total=total_nimg,
            initial=start_nimg,
            unit="img",
            unit_scale=True,
            dynamic_ncols=True,
            leave=False,
            disable=None,
            file=sys.stderr,
        )

    def log(self, line: str) -> None:
        if self.run_dir is None:
            return
        if self.bar is not None and not self.bar.disable:
            self.bar.write(line)
        else:
            print(line, flush=True)
        with open(self.run_dir / "log.txt", "a") as f:
            f.write(line + "\n")

    def progress(self, nimg: int) -> None:
        if self.bar is not None:
            self.bar.update(nimg - self.bar.n)

    def tick(self, fields: dict[str, float], losses: dict[str, float], nimg: int) -> None:
        if self.run_dir is None:
            return
        self.log(tick_line(fields, {k: v for k, v in losses.items() if k.endswith("/loss")}))
        record = {
            **{f"Progress/{k}": v for k, v in fields.items()},
            **{f"Loss/{k}": v for k, v in losses.items()},
            "timestamp": time.time(),
        }
        append_jsonl(self.run_dir / "stats.jsonl", record)
        for name, value in record.items():
            if name != "timestamp":
                self.tb.add_scalar(name, value, global_step=nimg)
        self.tb.flush()

    def metrics(self, rows: list[dict[str, Any]], nimg: int) -> None:
        """Rows of the one metrics schema (langfree.metrics.records) -> metrics.jsonl,
        TensorBoard (``Metrics/<name>``) and the log."""
        if self.run_dir is None:
            return
        for row in rows:
            append_jsonl(self.run_dir / "metrics.jsonl", row)
            value = row.get("value")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.tb.add_scalar(f"Metrics/{row['metric']}", value, global_step=nimg)
        self.tb.flush()
        summary = ", ".join(f"{r['metric']} {r['value']}" for r in rows)
        kimg = nimg / 1000
        self.log(f"metrics at kimg {kimg:.1f}: {summary}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, default=str) + "\n")  # metrics may return odd types
        f.flush()
