"""Run directories as plot data: curves from ``stats.jsonl`` and ``metrics.jsonl``, and the
latest preview grids (as pixel arrays: the UI never hands the browser a path)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file; a torn last line (a run still writing) is skipped."""
    rows = []
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def stats_series(run: Path) -> list[str]:
    """Numeric keys of stats.jsonl other than the x axis, in first-seen order."""
    keys: dict[str, None] = {}
    for row in read_jsonl(run / "stats.jsonl"):
        for k, v in row.items():
            if k != "Progress/kimg" and _number(v):
                keys.setdefault(k)
    return list(keys)


def default_series(keys: list[str]) -> list[str]:
    """The total loss of each phase (``Loss/<phase>/loss``), else the first few keys."""
    losses = [k for k in keys if k.startswith("Loss/") and k.endswith("/loss")]
    return losses or keys[:4]


def stats_frame(run: Path | None, series: list[str]):
    """Long table (kimg, value, series) of the chosen stats.jsonl keys (empty without a run)."""
    import pandas as pd

    wanted = set(series)
    rows = [] if run is None else [{"kimg": float(r["Progress/kimg"]), "value": float(v), "series": k}
            for r in read_jsonl(run / "stats.jsonl") if _number(r.get("Progress/kimg"))
            for k, v in r.items() if k in wanted and _number(v)]
    return pd.DataFrame(rows, columns=["kimg", "value", "series"])


def metrics_frame(run: Path | None):
    """Long table (kimg, value, metric) of metrics.jsonl (empty without a run)."""
    import pandas as pd

    rows = [] if run is None else [{"kimg": float(r["kimg"]), "value": float(r["value"]), "metric": str(r["metric"])}
            for r in read_jsonl(run / "metrics.jsonl")
            if _number(r.get("kimg")) and _number(r.get("value")) and "metric" in r]
    return pd.DataFrame(rows, columns=["kimg", "value", "metric"])


def latest_grids(run: Path, count: int = 4) -> list[tuple[np.ndarray, str]]:
    """The preview grids of the last ``count`` snapshots, newest first, with their names."""
    from PIL import Image

    from langfree.checkpoint import list_snapshots

    out = []
    for snap in reversed(list_snapshots(run)):
        grid = snap / "grid.png"
        if grid.is_file():
            with Image.open(grid) as img:
                out.append((np.array(img.convert("RGB")), snap.name))
        if len(out) == count:
            break
    return out


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
