"""The one row schema of ``metrics.jsonl``, written by training (at each snapshot) and by
``langfree eval`` alike: one JSON object per metric and snapshot.

    {"metric": "fid2k_full", "value": 41.2, "kimg": 40.0, "snapshot": "snapshot-000040",
     "snapshot_path": "/.../snapshot-000040", "data": "/.../eval.zip",
     "sample_options": {"steps": 40, ...}, "source": "train" | "eval",
     "timestamp": 1764620000.0, "result": {...the metric's full result...}}
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

SCHEMA_KEYS = ("metric", "value", "kimg", "snapshot", "snapshot_path", "data", "sample_options",
               "source", "timestamp", "result")


def metric_rows(results: dict[str, dict], snapshot: str | Path, kimg: float | None,
                data: str | None, sample_options: dict[str, Any] | None, source: str) -> list[dict]:
    stamp = time.time()
    path = Path(snapshot)
    return [{"metric": name, "value": result.get("value") if isinstance(result, dict) else result,
             "kimg": kimg, "snapshot": path.name, "snapshot_path": str(path), "data": data,
             "sample_options": sample_options or {}, "source": source, "timestamp": stamp,
             "result": result} for name, result in results.items()]
