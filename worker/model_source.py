"""Where a model comes from: turn a ``model.source`` string into a local Hugging Face-style directory.

The syntax (``hf://``, ``pvc://``, ``file://``, ``builtin:``, a local path) is parsed, torch-free, by
``mili.common.model_source``, which the operator shares; this module resolves a parsed source:

- ``hf://ORG/NAME[@REV]``: downloaded from the Hugging Face Hub into the cache (``huggingface_hub``).
- ``pvc://CLAIM/PATH``: a PersistentVolumeClaim mounted under ``$MILI_PVC_ROOT`` (default ``/models``).
- ``file:///PATH`` and plain paths: used as they are.
- ``builtin:NAME``: a model MILI ships (see ``builtin_models``), converted once into the cache.
"""

from __future__ import annotations

import os
from pathlib import Path

from mili.common.model_source import (
    ACCEPTED_FORMS,
    DEFAULT_MODEL,
    ModelSource,
    ModelSourceError,
    model_source_error,
    parse_model_source,
)

__all__ = [
    "ACCEPTED_FORMS",
    "DEFAULT_MODEL",
    "ModelSource",
    "ModelSourceError",
    "cache_root",
    "image_cache_root",
    "parse_model_source",
    "pvc_root",
    "resolve_model_source",
]

DEFAULT_PVC_ROOT = "/models"
# Files an engine needs from a Hub snapshot; skips other weight formats (.bin, .gguf, onnx, ...).
HUB_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer*", "*.txt", "*.model"]


def cache_root() -> Path:
    """Root of MILI's cache: ``$MILI_CACHE_DIR``, else ``~/.cache/mili``."""
    configured = os.environ.get("MILI_CACHE_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "mili"


def image_cache_root() -> Path | None:
    """Read-only cache baked into an image (``$MILI_IMAGE_CACHE_DIR``): converted builtin models and
    precompiled cubins, consulted before the writable ``cache_root()``."""
    configured = os.environ.get("MILI_IMAGE_CACHE_DIR")
    return Path(configured) if configured else None


def pvc_root() -> Path:
    """Where PersistentVolumeClaims are mounted in a worker pod: ``$MILI_PVC_ROOT``, else ``/models``."""
    return Path(os.environ.get("MILI_PVC_ROOT") or DEFAULT_PVC_ROOT)


def resolve_model_source(source: str) -> Path:
    """Local HF-style directory (config.json, safetensors, tokenizer files) for a model source.

    Downloads (``hf://``) or converts (``builtin:``) into ``cache_root()`` when needed. Raises
    ``ModelSourceError`` naming the source and the accepted forms when it is malformed or missing.
    """
    parsed = parse_model_source(source)
    if parsed.scheme == "builtin":
        from mili.worker.builtin_models import BuiltinModelError, ensure_builtin_model

        try:
            return ensure_builtin_model(parsed.location)
        except BuiltinModelError as error:
            raise model_source_error(source, str(error)) from error
    if parsed.scheme == "hf":
        directory = _download_from_hub(source, parsed)
    elif parsed.scheme == "pvc":
        directory = pvc_root() / str(parsed.claim) / parsed.location
    else:
        directory = Path(parsed.location).expanduser()
    return _checked_model_dir(source, directory)


def _checked_model_dir(source: str, directory: Path) -> Path:
    if not directory.is_dir():
        raise model_source_error(source, f"{directory} is not a directory")
    if not (directory / "config.json").is_file():
        raise model_source_error(
            source, f"{directory} has no config.json (expected a Hugging Face-style model directory)"
        )
    return directory.resolve()


def _download_from_hub(source: str, parsed: ModelSource) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as error:
        raise model_source_error(source, "hf:// needs the huggingface_hub package") from error
    try:
        directory = snapshot_download(
            parsed.location,
            revision=parsed.revision,
            cache_dir=cache_root() / "hf",
            allow_patterns=HUB_ALLOW_PATTERNS,
        )
    except Exception as error:  # the hub client raises many types: offline, 404, gated, network
        raise model_source_error(
            source,
            f"could not download {parsed.location}"
            + (f" at revision {parsed.revision}" if parsed.revision else "")
            + f" from the Hugging Face Hub ({type(error).__name__}: {error})",
        ) from error
    return Path(directory)
