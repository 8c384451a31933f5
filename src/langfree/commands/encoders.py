"""CLI commands: ``langfree encoder train``, ``langfree encode``."""

from __future__ import annotations

import typer


def register(app: typer.Typer, encoder_app: typer.Typer) -> None:
    pass
