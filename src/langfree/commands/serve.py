"""``langfree serve SNAPSHOT_OR_RUN [...]``: the web UI (generate, runs) on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import typer


def serve(
    paths: list[Path] = typer.Argument(..., help="Snapshot directories and/or run directories (a run serves its latest snapshot and lets you switch to earlier ones)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind. The default serves this machine only; 0.0.0.0 exposes the UI to the network (use --auth)."),
    port: int | None = typer.Option(None, "--port", help="Port (default: the first free one from 7860)."),
    auth: str | None = typer.Option(None, "--auth", help="USER:PASS required to open the UI."),
    max_batch: int = typer.Option(16, "--max-batch", min=1, max=256, help="Most images one request may ask for."),
    concurrency: int = typer.Option(1, "--concurrency", min=1, help="Requests sampling at the same time."),
    queue: int = typer.Option(32, "--queue", min=0, help="Requests that may wait; beyond them a request is told the server is busy."),
    max_prompt: int = typer.Option(500, "--max-prompt", min=1, help="Longest prompt accepted, in characters."),
    batch: int = typer.Option(4, "--batch", min=1, help="Images per sampling call; a cancel takes effect between calls."),
    encoder: str | None = typer.Option(None, "--encoder", help="Encoder spec overriding the one recorded in the snapshots."),
) -> None:
    """Serve snapshots in the browser: prompts, seeds and the family's sampling options in, PNGs
    (with their settings in a 'parameters' chunk) out; training curves and preview grids."""
    from langfree.checkpoint import SnapshotError
    from langfree.serve.safety import Limits, parse_auth

    try:
        from langfree.serve.app import ServeSettings
        from langfree.serve.app import serve as run_server

        settings = ServeSettings(
            paths=tuple(str(p) for p in paths), host=host, port=port, auth=parse_auth(auth),
            concurrency=concurrency, queue=queue, chunk=batch, encoder=encoder or "auto",
            limits=Limits(max_prompt_chars=max_prompt, max_batch=max_batch))
        if host not in ("127.0.0.1", "localhost", "::1") and settings.auth is None:
            typer.echo(f"warning: serving on {host} without --auth: anyone who can reach this "
                       "machine can use the UI", err=True)
        run_server(settings, block=True)
    except (SnapshotError, ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
