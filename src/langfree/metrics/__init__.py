"""Evaluation: named metrics over deterministic per-seed samples (the name is the protocol).

    from langfree.metrics import compute_metrics
    results = compute_metrics(["fid2k_full", "clip_score"], family.sample, encoder, "ref.zip")
    results["fid2k_full"]  # {"value": ..., "extractor": "clip:...", "inception": False, ...}

Every result names what it measured with: ``extractor`` + ``inception`` for FID/KID/IS (Inception
only from a local weights file; never downloaded), ``encoder`` for CLIP score and R-precision,
``conditions`` ("captions" or "image_embeddings") for how samples were conditioned.
"""

from langfree.metrics.attributes import (
                                         AttributeEvaluator,
                                         attribute_accuracy,
                                         balanced_prompts,
                                         load_attribute_evaluator,
                                         save_attribute_evaluator,
                                         train_attribute_evaluator,
)
from langfree.metrics.distribution import (
                                         frechet_distance,
                                         inception_score,
                                         kernel_distance,
)
from langfree.metrics.extractors import (
                                         ExtractorUnavailable,
                                         FeatureExtractor,
                                         encoder_extractor,
                                         inception_extractor,
                                         resolve_extractor,
)
from langfree.metrics.registry import (
                                         METRICS,
                                         EvalContext,
                                         MetricSpec,
                                         compute_metrics,
                                         parse_metric,
)
from langfree.metrics.snapshot import evaluate_snapshot, metrics_log_path

__all__ = [
                                         "METRICS",
                                         "AttributeEvaluator",
                                         "EvalContext",
                                         "ExtractorUnavailable",
                                         "FeatureExtractor",
                                         "MetricSpec",
                                         "attribute_accuracy",
                                         "balanced_prompts",
                                         "compute_metrics",
                                         "encoder_extractor",
                                         "evaluate_snapshot",
                                         "frechet_distance",
                                         "inception_extractor",
                                         "inception_score",
                                         "kernel_distance",
                                         "load_attribute_evaluator",
                                         "metrics_log_path",
                                         "parse_metric",
                                         "resolve_extractor",
                                         "save_attribute_evaluator",
                                         "train_attribute_evaluator",
]
