"""Server-side limits and the no-network, no-file-access settings of the web UI.

The browser enforces nothing: ``Textbox(max_length=...)`` and a slider's range are conveniences
for honest users. Every request is re-checked here, in the function that serves it.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

MAX_SEED = 2**31 - 1          # seeds 0..MAX_SEED; image i of a request uses (seed + i) mod 2^31
RANDOM_SEED = -1              # what the seed box sends for "pick one"
BUSY_MESSAGE = "The server is busy (the generation queue is full); try again in a moment."


class RequestError(ValueError):
    """A request the server refuses; the message is shown to the user as is."""


@dataclass(frozen=True)
class Limits:
    max_prompt_chars: int = 500   # CLIP reads 77 tokens; 500 characters is already far beyond
    max_batch: int = 16           # images per request
    max_upload: str = "8mb"       # per uploaded file (gradio refuses larger bodies)


def check_text(text: str | None, what: str, limits: Limits) -> str:
    text = "" if text is None else str(text)
    if len(text) > limits.max_prompt_chars:
        raise RequestError(f"{what} has {len(text)} characters; the limit is "
                           f"{limits.max_prompt_chars}")
    return text.strip()


def check_count(count: object, limits: Limits) -> int:
    try:
        n = int(count)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise RequestError(f"number of images {count!r}: expected a whole number") from None
    if n != count and not (isinstance(count, float) and count.is_integer()):
        raise RequestError(f"number of images {count!r}: expected a whole number")
    if not 1 <= n <= limits.max_batch:
        raise RequestError(f"number of images {n}: must be between 1 and {limits.max_batch} "
                           "(the server's --max-batch)")
    return n


def resolve_seed(seed: object) -> int:
    """-1 -> a fresh random seed; otherwise the seed itself, checked to be in 0..MAX_SEED."""
    try:
        value = int(seed)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise RequestError(f"seed {seed!r}: expected a whole number (-1 = random)") from None
    if value == RANDOM_SEED:
        return secrets.randbelow(MAX_SEED + 1)
    if not 0 <= value <= MAX_SEED:
        raise RequestError(f"seed {value}: must be -1 (random) or in 0..{MAX_SEED}")
    return value


def seeds_from(base: int, count: int) -> list[int]:
    return [(base + i) % (MAX_SEED + 1) for i in range(count)]


def parse_auth(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise ValueError("--auth USER:PASS: give a user name and a password separated by ':'")
    return user, password


def quiet_environment() -> None:
    """No analytics, telemetry or hub requests, and local calls never through a proxy. Must run
    before gradio is imported (it reads some of these at import time)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["DO_NOT_TRACK"] = "1"
    local = ["127.0.0.1", "localhost"]
    for key in ("NO_PROXY", "no_proxy"):
        have = [h for h in os.environ.get(key, "").split(",") if h]
        os.environ[key] = ",".join(have + [h for h in local if h not in have])


def launch_kwargs(host: str, port: int | None, auth: tuple[str, str] | None,
                  limits: Limits, threads: int, blocked: list = ()) -> dict:
    """Arguments of ``Blocks.launch`` that keep the server local and its files private."""
    return dict(
        server_name=host, server_port=port, auth=auth,
        share=False,               # never a public tunnel
        allowed_paths=[],          # nothing outside gradio's own cache of this app's outputs
        blocked_paths=[str(p) for p in blocked],  # and, to be sure, never the served models
        max_file_size=limits.max_upload,
        ssr_mode=False,            # no node server beside the Python one
        pwa=False, mcp_server=False, enable_monitoring=False,
        inbrowser=False, show_error=True, quiet=True,
        max_threads=threads,
    )
