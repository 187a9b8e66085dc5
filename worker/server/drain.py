"""uvicorn that drains on SIGTERM before it stops listening.

Kubernetes sends SIGTERM once the pod is leaving (after its preStop hook). From then on /ready
answers 503 (so nothing routes here any more) and new /v1 calls get 503 with ``Retry-After``, while
the socket stays open and the calls in flight run to their end. Once none is left, or
``drain_timeout_s`` has passed, uvicorn's own shutdown runs: it closes the socket and cancels what is
still running (whose engine requests are then aborted). A second SIGTERM, or SIGINT, stops at once.
"""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType

import uvicorn

from mili.worker.server.routes import ServerState

logger = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServerState, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.state = state
        self.drain_timeout_s = drain_timeout_s
        self._drain_deadline: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self._drain_deadline is None:
            self.state.draining = True
            self._drain_deadline = time.monotonic() + self.drain_timeout_s
            logger.info(
                "SIGTERM: draining (/ready is 503); %d call(s) in flight get up to %.0f s",
                self.state.calls_in_flight,
                self.drain_timeout_s,
            )
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._drain_deadline is not None and not self.should_exit:
            if self.state.calls_in_flight == 0:
                logger.info("drained: no call in flight; shutting down")
                self.should_exit = True
            elif time.monotonic() >= self._drain_deadline:
                logger.info(
                    "drain deadline passed with %d call(s) in flight; aborting them",
                    self.state.calls_in_flight,
                )
                self.should_exit = True
        return await super().on_tick(counter)
