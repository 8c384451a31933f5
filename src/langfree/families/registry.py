"""Name -> family package (or ``package:ATTR``). One line per family; each package defines ``SPEC`` (a
``langfree.families.spec.TrainSpec``) and stays light, so listing families imports no torch."""

from __future__ import annotations

import importlib

_FAMILIES = {
    "lafite": "langfree.families.lafite",
    "lafite-perturb": "langfree.families.lafite:PERTURB_SPEC",
    "maskdit": "langfree.families.maskdit",
    "vae": "langfree.families.vae",
    "sd": "langfree.families.sd",
    "custom-diffusion": "langfree.families.custom_diffusion",
    "vqgan": "langfree.families.vqgan",
    "dalle": "langfree.families.dalle",
    "small-clip": "langfree.encoders.spec",
    "attribute-evaluator": "langfree.families.evaluator_spec",
}


def family_names() -> list[str]:
    return sorted(_FAMILIES)


def get_spec(name: str):
    """The TrainSpec of family ``name``."""
    if name not in _FAMILIES:
        raise KeyError(f"unknown family {name!r}; known families: {', '.join(family_names())}")
    module, _, attr = _FAMILIES[name].partition(":")
    return getattr(importlib.import_module(module), attr or "SPEC")


def get_family(name: str) -> type:
    """The Family class of ``name`` (imports its model code)."""
    return get_spec(name).family_class()
