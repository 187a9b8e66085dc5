"""MILI's OpenAI-compatible HTTP server (FastAPI), with the engine in its own thread.

``create_app`` loads lazily, so the CLI can read the server's limits (``server.limits``) without
importing FastAPI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mili.worker.server.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from mili.worker.server.app import create_app

        return create_app
    raise AttributeError(f"module 'mili.worker.server' has no attribute {name!r}")
