"""Commands a family contributes beside training (``TrainSpec.commands``), e.g.
``langfree tokenizer train``: registered here from the registry, one typer group per prefix."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from langfree.families.registry import family_names, get_spec
    from langfree.families.spec import resolve

    groups: dict[str, typer.Typer] = {}
    for name in family_names():
        for command, target in get_spec(name).commands.items():
            group, _, sub = command.partition(" ")
            if not sub:
                app.command(group)(resolve(target))
                continue
            if group not in groups:
                groups[group] = typer.Typer(help=f"{group} commands.", no_args_is_help=True)
                app.add_typer(groups[group], name=group)
            groups[group].command(sub)(resolve(target))
