"""Requests held while the router has no ready worker: a bounded room, opened by the first ready worker."""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable

NO_WORKERS_MARKER = b"No available workers"  # vllm-router 0.1.17's 503 body without a healthy worker


class Admission(enum.Enum):
    """How a request's wait for a ready worker ended."""

    READY = "ready"
    FULL = "full"  # the room held its capacity already
    TIMED_OUT = "timed_out"  # no worker became ready before the request's deadline


def is_no_workers_answer(status_code: int, body: bytes) -> bool:
    """True for the router's answer when it has no healthy worker to route to."""
    return status_code == 503 and NO_WORKERS_MARKER in body


class HoldingRoom:
    """At most ``capacity`` requests wait here at a time, each until a worker is ready or its deadline.

    ``on_change`` is told the number held after every change (the ``mili_router_held_requests`` gauge)."""

    def __init__(self, capacity: int, on_change: Callable[[int], None] = lambda held: None) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.held = 0
        self._on_change = on_change
        self._ready = asyncio.Event()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def set_ready(self, ready: bool) -> None:
        """Open the door (a worker is ready: every held request goes on) or close it."""
        if ready:
            self._ready.set()
        else:
            self._ready.clear()

    async def wait_for_worker(self, deadline: float) -> Admission:
        """Wait until a worker is ready (at once if one is) or ``deadline`` (``time.monotonic()``) passes."""
        if self.ready:
            return Admission.READY
        if self.held >= self.capacity:
            return Admission.FULL
        self._change(+1)
        try:
            await asyncio.wait_for(self._ready.wait(), timeout=max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            return Admission.TIMED_OUT
        finally:
            self._change(-1)
        return Admission.READY

    def _change(self, delta: int) -> None:
        self.held += delta
        self._on_change(self.held)
