"""Name -> Family class. Families register lazily so importing langfree stays cheap."""

from __future__ import annotations

import importlib

_FAMILIES = {
    "lafite": "langfree.families.lafite.family:LafiteFamily",
}


def family_names() -> list[str]:
    return sorted(_FAMILIES)


def get_family(name: str) -> type:
    if name not in _FAMILIES:
        raise KeyError(f"unknown family {name!r}; known families: {', '.join(family_names())}")
    module, attr = _FAMILIES[name].split(":")
    return getattr(importlib.import_module(module), attr)
