"""``langfree train attribute-evaluator``: the shapes attribute evaluator's entry in the generic
train command. Here rather than in ``langfree.metrics`` because that package's ``__init__``
imports torch, and the CLI reads every family's spec to build ``--help``."""

from __future__ import annotations

from langfree.families.spec import Flag, TrainSpec

SPEC = TrainSpec(
    name="attribute-evaluator",
    family="langfree.metrics.attributes:AttributeEvaluatorFamily",
    config="langfree.metrics.attributes:EvaluatorConfig",
    help="The shapes attribute evaluator (a CNN reading shape, colour, size, position) on a "
         "shapes archive's ground truth; each snapshot exports an evaluator directory (export/, "
         "no ceiling: `train_attribute_evaluator` measures it on held-out images).",
    flags=(
        Flag(("--resolution",), "resolution", int, "Input side (images are resized to it)."),
        Flag(("--width",), "width", int, "CNN width."),
        Flag(("--lr",), "lr", float, "Adam learning rate."),
    ),
    prepare="langfree.metrics.attributes:prepare_evaluator",
    encoder="none",
)
