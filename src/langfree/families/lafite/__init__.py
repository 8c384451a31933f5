"""LAFITE: StyleGAN2 conditioned on CLIP features, trained language-free or on captions."""

from langfree.families.lafite.train import PERTURB_SPEC, SPEC

__all__ = ["PERTURB_SPEC", "SPEC"]
