"""Evaluate a snapshot: load it, run named metrics, append the results to metrics.jsonl.

Used by ``langfree eval`` and usable as the training loop's ``metrics(snapshot_dir)`` callback
(``functools.partial(evaluate_snapshot, names=..., data=...)``).
"""

from __future__ import annotations

import json
import os
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
                      seed: int = 0, batch: int | None = None, device: str = "cpu", write: bool = True,
                      sample: list[str] | dict | None = None, source: str = "eval",
                      log=None) -> dict:
    """Run ``names`` on the snapshot (or a run dir's latest) with the sampling options
    ``sample`` (``key=value`` strings or a dict; None = the family's defaults); returns
    ``{"snapshot", "family", "kimg", "data", "sample_options", "results": {name: result},
    "rows": [...]}`` where rows follow the one metrics.jsonl schema (metrics/records.py) and,
    when ``write``, are appended to ``metrics_log_path(snapshot)``. ``batch`` None: the
    family's ``sample_batch``."""
    from langfree.checkpoint import load_snapshot, read_manifest, resolve_snapshot
    from langfree.data.archive import ImageArchive
    from langfree.families.base import sample_batch
    from langfree.metrics.records import metric_rows
    from langfree.sampling.conditions import options_dict, parse_sample_options

    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    specs = [parse_metric(n, num) for n in names]  # fail on a bad name before loading anything
    path = resolve_snapshot(snapshot)
    manifest = read_manifest(path)
    family = load_snapshot(path, encoder=encoder, device=device)
    options = parse_sample_options(family, sample)
    reference = ImageArchive(data)
    if any(s.kind == "attribute_accuracy" for s in specs) and not isinstance(evaluator, AttributeEvaluator):
        evaluator = ensure_evaluator(evaluator, data, log)

    def generate(conditions, seeds):
        return family.sample(conditions, seeds, options)

    results = compute_metrics(names, generate, family.encoder, reference, inception=inception,
                              evaluator=evaluator if isinstance(evaluator, AttributeEvaluator) else None,
                              num=num, seed=seed, batch=batch or sample_batch(family),
                              device=device)
    opts = options_dict(options)
    for result in results.values():
        result["sample_options"] = opts
    data_path = str(Path(data).resolve())
    rows = metric_rows(results, path, manifest.get("kimg"), data_path, opts, source)
    report = {"snapshot": str(path), "family": manifest.get("family"), "kimg": manifest.get("kimg"),
              "data": data_path, "sample_options": opts, "results": results, "rows": rows}
    if write:
        append_jsonl(metrics_log_path(path), rows)
    return report


def snapshots_in_range(run_dir: str | os.PathLike, bounds: str) -> list[Path]:
    """``FIRST:LAST`` kimg bounds (inclusive; either may be empty) -> the run's snapshots."""
    from langfree.checkpoint import SnapshotError, list_snapshots, read_manifest

    if ":" not in bounds:
        raise ValueError(f"--snapshots {bounds!r}: expected FIRST:LAST in kimg, e.g. 100:400, "
                         ":400 or 100:")
    lo_text, hi_text = bounds.split(":", 1)
    try:
        lo = float(lo_text) if lo_text.strip() else float("-inf")
        hi = float(hi_text) if hi_text.strip() else float("inf")
    except ValueError:
        raise ValueError(f"--snapshots {bounds!r}: FIRST and LAST are kimg numbers") from None
    snaps = [p for p in list_snapshots(run_dir) if lo <= float(read_manifest(p)["kimg"]) <= hi]
    if not snaps:
        raise SnapshotError(f"no snapshot of {run_dir} lies in kimg [{lo_text or '-inf'}, "
                            f"{hi_text or 'inf'}]; pass a run directory and a range that holds some")
    return snaps


LOWER_IS_BETTER = ("fid", "kid")


def best_row(rows: list[dict], metric: str) -> dict | None:
    """The best row of ``metric`` (lowest FID/KID, highest otherwise)."""
    scored = [r for r in rows if r["metric"] == metric and isinstance(r["value"], (int, float))]
    if not scored:
        return None
    lower = parse_metric(metric).kind in LOWER_IS_BETTER
    return (min if lower else max)(scored, key=lambda r: r["value"])
