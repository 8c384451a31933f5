"""The generation worker: a bounded queue in front of the families, and requests turned into
PNG-ready images a batch at a time (so progress shows and a cancel takes effect between
batches).

Gradio has a queue of its own, but a request beyond its size gets gradio's generic message; the
``Admission`` here is the queue the user sees: ``concurrency`` requests sample at once, up to
``queue`` more wait (they are told their position), and any request beyond that is refused at
once with ``BUSY_MESSAGE``. No request waits without bound: each either runs, waits in a
bounded line that moves, or is refused.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from langfree.serve.models import ModelCache, ModelEntry, Traits
from langfree.serve.safety import BUSY_MESSAGE, RequestError


class Busy(RequestError):
    def __init__(self) -> None:
        super().__init__(BUSY_MESSAGE)


@dataclass(eq=False)
class Ticket:
    started: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)


class Admission:
    """At most ``concurrency`` running and ``queue`` waiting tickets, served in order."""

    def __init__(self, concurrency: int, queue: int):
        if concurrency < 1 or queue < 0:
            raise ValueError(f"--concurrency {concurrency} / --queue {queue}: need concurrency "
                             ">= 1 and queue >= 0")
        self.concurrency, self.queue = concurrency, queue
        self._cond = threading.Condition()
        self._running = 0
        self._waiting: deque[Ticket] = deque()

    def join(self) -> Ticket:
        with self._cond:
            if self._running + len(self._waiting) >= self.concurrency + self.queue:
                raise Busy()
            ticket = Ticket()
            self._waiting.append(ticket)
            self._cond.notify_all()
            return ticket

    def wait_turn(self, ticket: Ticket, timeout: float) -> int | None:
        """None once ``ticket`` may run; else, after at most ``timeout`` s, its 1-based place."""
        with self._cond:
            if not self._may_start(ticket):
                self._cond.wait(timeout)
            if not self._may_start(ticket):
                return self._waiting.index(ticket) + 1
            self._waiting.popleft()
            self._running += 1
            ticket.started = True
            self._cond.notify_all()
            return None

    def _may_start(self, ticket: Ticket) -> bool:
        return bool(self._waiting) and self._waiting[0] is ticket and self._running < self.concurrency

    def leave(self, ticket: Ticket) -> None:
        with self._cond:
            if ticket.started:
                self._running -= 1
                ticket.started = False
            elif ticket in self._waiting:
                self._waiting.remove(ticket)
            self._cond.notify_all()

    def load(self) -> tuple[int, int]:
        with self._cond:
            return self._running, len(self._waiting)


@dataclass(frozen=True)
class Request:
    """A checked request (see ``app.check_request``): the options already parsed and
    range-checked by ``parse_sample_options``."""

    entry: ModelEntry
    prompt: str
    negative_prompt: str
    seeds: list[int]
    options: Any
    reference: np.ndarray | None = None   # [H, W, 3] uint8, for image variation


@dataclass(frozen=True)
class Result:
    pixels: np.ndarray        # [H, W, 3] uint8
    parameters: Any           # langfree.sampling.generate.Parameters


class Worker:
    """Requests -> images through the engine's sampling contract, ``chunk`` images per call."""

    def __init__(self, cache: ModelCache, traits: dict[str, Traits], chunk: int = 4):
        self.cache, self.traits, self.chunk = cache, traits, max(1, chunk)

    def conditions(self, family: Any, request: Request):
        import torch

        from langfree.sampling.conditions import build_conditions

        negative = request.negative_prompt or None
        if request.reference is not None:
            if not self.traits[request.entry.family].supports_image_variation:
                raise RequestError(f"{request.entry.family} does not support image variation")
            if family.encoder is None:
                raise RequestError("this snapshot records no encoder, so a reference image "
                                   "cannot be turned into a condition")
            ref = torch.from_numpy(np.ascontiguousarray(request.reference[..., :3]))
            ref = ref.permute(2, 0, 1)[None].float() / 127.5 - 1          # [1, 3, H, W]
            return build_conditions(family.encoder, [], [ref], negative)
        if not request.prompt:
            raise RequestError("enter a prompt (or upload a reference image)")
        return build_conditions(family.encoder, [request.prompt], [], negative)

    def run(self, request: Request, cancelled: threading.Event | None = None
            ) -> Iterator[list[Result]]:
        """Yield the results a chunk at a time; stop early once ``cancelled`` is set."""
        from langfree.sampling.conditions import options_dict
        from langfree.sampling.generate import Parameters, generate_grid, to_uint8

        family = self.cache.get(request.entry)
        conditions = self.conditions(family, request)
        opts = options_dict(request.options)
        prompt = conditions.prompts[0]
        negative = conditions.negative_prompts[0] if conditions.negative_prompts else None
        for i in range(0, len(request.seeds), self.chunk):
            if cancelled is not None and cancelled.is_set():
                return
            seeds = request.seeds[i:i + self.chunk]
            images = generate_grid(family, conditions, seeds, request.options)[0]  # [S, 3, H, W]
            yield [Result(to_uint8(img), Parameters(prompt, seed, family.name,
                                                    str(request.entry.path), opts, negative))
                   for img, seed in zip(images, seeds)]
