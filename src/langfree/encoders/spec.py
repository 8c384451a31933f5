"""``langfree train small-clip``: the small CLIP's entry in the generic train command (light: no
torch; the family is resolved on first use). ``langfree encoder train`` runs the same family with
a held-out split and writes the encoder directory; a ``train small-clip`` run's snapshots carry
that directory under ``export/`` (pass ``--encoder RUN/snapshots/snapshot-K/export``)."""

from __future__ import annotations

from langfree.families.spec import Flag, TrainSpec

SPEC = TrainSpec(
    name="small-clip",
    family="langfree.encoders.small_clip:SmallClipFamily",
    config="langfree.encoders.small_clip:SmallClipConfig",
    help="langfree's small CLIP (open_clip towers, symmetric InfoNCE) on a CAPTIONED archive; "
         "each snapshot exports an encoder directory (export/). The recipe of `langfree encoder "
         "train` is --batch 256 --kimg 102.4 (400 steps); the warm-up is the config's warmup_kimg "
         "(--lr-warmup overrides it).",
    flags=(
        Flag(("--embed-dim",), "embed_dim", int, "Joint embedding size D."),
        Flag(("--lr",), "lr", float, "Peak AdamW learning rate (warm-up, then cosine)."),
        Flag(("--weight-decay",), "weight_decay", float, "AdamW weight decay (not on gains, "
             "biases, embeddings, the logit scale)."),
    ),
    encoder="none",
)
