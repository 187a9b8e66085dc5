"""MILI's OpenAI-compatible HTTP server (FastAPI), with the engine in its own thread."""

from mili.worker.server.app import create_app

__all__ = ["create_app"]
