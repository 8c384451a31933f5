"""Evaluate a snapshot: load it, run named metrics, append the results to metrics.jsonl.

Used by ``langfree eval`` and usable as the training loop's ``metrics(snapshot_dir)`` callback
(``functools.partial(evaluate_snapshot, names=..., data=...)``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from langfree.metrics.attributes import (
    AttributeEvaluator,
    load_attribute_evaluator,
    train_attribute_evaluator,
)
from langfree.metrics.registry import compute_metrics, parse_metric


def metrics_log_path(snapshot: Path) -> Path:
    """``run/metrics.jsonl`` for ``run/snapshots/snapshot-*``; else inside the snapshot dir."""
    snapshot = Path(snapshot)
    if snapshot.parent.name == "snapshots":
        return snapshot.parent.parent / "metrics.jsonl"
    return snapshot / "metrics.jsonl"


def append_jsonl(path: Path, records: list[dict]) -> None:
    """Append lines by rewriting through a temp file + os.replace: a crash never leaves half a line."""
    path = Path(path)
    old = path.read_text() if path.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(old + "".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


def default_evaluator_dir(data: str | os.PathLike) -> Path:
    data = Path(data)
    return data.with_name(f"{data.stem}.attribute-evaluator")


def ensure_evaluator(evaluator_dir: str | os.PathLike | None, data: str | os.PathLike,
                     log=None) -> AttributeEvaluator:
    """Load the evaluator at ``evaluator_dir`` (default: beside the data archive), training it on
    ``data`` (a shapes archive with attributes) the first time."""
    path = Path(evaluator_dir) if evaluator_dir is not None else default_evaluator_dir(data)
    if (path / "evaluator.json").is_file():
        evaluator = load_attribute_evaluator(path)
        trained_on = evaluator.info.get("train", {})
        # A cached evaluator beside an archive that was rewritten since is stale: retrain it.
        if evaluator_dir is not None or trained_on.get("archive_bytes") == Path(data).stat().st_size:
            return evaluator
    if log:
        log(f"training the attribute evaluator on {data} into {path} (once; ~1.5 min for 5000 images)")
    evaluator, _ = train_attribute_evaluator(data, path, log=log)
    return evaluator


def evaluate_snapshot(snapshot: str | os.PathLike, names: list[str] | str, data: str | os.PathLike,
                      *, encoder: Any = "auto", inception: str | None = None,
                      evaluator: AttributeEvaluator | str | None = None, num: int | None = None,
                      seed: int = 0, batch: int = 32, device: str = "cpu", write: bool = True,
                      log=None) -> dict:
    """Run ``names`` on the snapshot (or a run dir's latest); returns
    ``{"snapshot", "family", "kimg", "data", "results": {name: result}}`` and, when ``write``,
    appends one line per metric to ``metrics_log_path(snapshot)``."""
    from langfree.checkpoint import load_snapshot, read_manifest, resolve_snapshot
    from langfree.data.archive import ImageArchive

    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    specs = [parse_metric(n, num) for n in names]  # fail on a bad name before loading anything
    path = resolve_snapshot(snapshot)
    manifest = read_manifest(path)
    family = load_snapshot(path, encoder=encoder, device=device)
    reference = ImageArchive(data)
    if any(s.kind == "attribute_accuracy" for s in specs) and not isinstance(evaluator, AttributeEvaluator):
        evaluator = ensure_evaluator(evaluator, data, log)

    def generate(conditions, seeds):
        return family.sample(conditions, seeds)

    results = compute_metrics(names, generate, family.encoder, reference, inception=inception,
                              evaluator=evaluator if isinstance(evaluator, AttributeEvaluator) else None,
                              num=num, seed=seed, batch=batch, device=device)
    report = {"snapshot": str(path), "family": manifest.get("family"), "kimg": manifest.get("kimg"),
              "data": str(Path(data).resolve()), "results": results}
    if write:
        stamp = time.time()
        append_jsonl(metrics_log_path(path), [
            {"metric": name, "snapshot": str(path), "kimg": manifest.get("kimg"),
             "data": report["data"], "timestamp": stamp, **result}
            for name, result in results.items()])
    return report
