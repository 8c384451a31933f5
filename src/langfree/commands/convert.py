"""``langfree convert ...``: import official checkpoints as langfree snapshots (tensors only).

Each family declares its converters in its TrainSpec (``converters``: name -> a typer command
function); this module only registers them.
"""

from __future__ import annotations

import typer


def register(group: typer.Typer) -> None:
    from langfree.families.registry import family_names, get_spec
    from langfree.families.spec import resolve

    for name in family_names():
        for command, target in get_spec(name).converters.items():
            group.command(command)(resolve(target))
