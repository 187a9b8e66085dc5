"""Where a model comes from: turn a ``model.source`` string into a local Hugging Face-style directory.

Accepted forms (the same ones ``MiliDeployment.spec.model.source`` takes):

- ``hf://ORG/NAME[@REV]``: downloaded from the Hugging Face Hub into the cache (``huggingface_hub``).
- ``pvc://CLAIM/PATH``: a PersistentVolumeClaim mounted under ``$MILI_PVC_ROOT`` (default ``/models``).
- ``file:///PATH``: an absolute local path.
- ``builtin:NAME``: a model MILI ships (see ``builtin_models``), converted once into the cache.
- a plain local path (absolute or relative), for development.

``parse_model_source`` checks the syntax without touching disk or network (the operator uses it to
validate a spec); ``resolve_model_source`` also fetches or converts and returns the directory.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "builtin:smollm2-135m-instruct"
DEFAULT_PVC_ROOT = "/models"

ACCEPTED_FORMS = "hf://ORG/NAME[@REV], pvc://CLAIM/PATH, file:///PATH, builtin:NAME or a local directory path"

# Kubernetes object names (RFC 1123 label) for PVC claims; Hub repo ids are ORG/NAME of [A-Za-z0-9._-].
_CLAIM_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_HUB_NAME_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Files an engine needs from a Hub snapshot; skips other weight formats (.bin, .gguf, onnx, ...).
HUB_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer*", "*.txt", "*.model"]


class ModelSourceError(ValueError):
    """A model source that is malformed or cannot be resolved; the message names the source."""


@dataclass(frozen=True)
class ModelSource:
    """A parsed model source: ``scheme`` is one of hf, pvc, file, builtin, path."""

    scheme: str
    location: str  # hf: ORG/NAME, pvc: path inside the claim, file/path: a path, builtin: NAME
    revision: str | None = None  # hf only
    claim: str | None = None  # pvc only
    uri: str = ""  # the source as written


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


def _error(source: str, problem: str) -> ModelSourceError:
    return ModelSourceError(f"model source {source!r}: {problem}; accepted forms: {ACCEPTED_FORMS}")


def _check_relative_path(source: str, path: str) -> None:
    if ".." in Path(path).parts:
        raise _error(source, "the path may not contain '..'")


def parse_model_source(source: str) -> ModelSource:
    """Check the syntax of ``source`` and split it into parts; touches neither disk nor network."""
    if not isinstance(source, str) or not source.strip():
        raise _error(str(source), "it is empty")
    source = source.strip()
    return dataclasses.replace(_parse(source), uri=source)


def _parse(source: str) -> ModelSource:
    if source.startswith("hf://"):
        return _parse_hub(source, source[len("hf://") :])
    if source.startswith("pvc://"):
        return _parse_pvc(source, source[len("pvc://") :])
    if source.startswith("file://"):
        path = source[len("file://") :]
        if not path.startswith("/"):
            raise _error(source, "file:// takes an absolute path with an empty host, as in file:///models/x")
        return ModelSource("file", path)
    if source.startswith("builtin:"):
        name = source[len("builtin:") :]
        if not name:
            raise _error(source, "builtin: needs a model name")
        return ModelSource("builtin", name)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", source):
        raise _error(source, "unknown scheme")
    return ModelSource("path", source)


def _parse_hub(source: str, rest: str) -> ModelSource:
    repo_id, _, revision = rest.partition("@")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(_HUB_NAME_PART.match(part) for part in parts):
        raise _error(source, "hf:// needs a repository id ORG/NAME (letters, digits, '.', '_', '-')")
    if "@" in rest and not revision:
        raise _error(source, "hf://ORG/NAME@ needs a revision after '@'")
    return ModelSource("hf", repo_id, revision or None)


def _parse_pvc(source: str, rest: str) -> ModelSource:
    claim, _, path = rest.partition("/")
    if not _CLAIM_NAME.match(claim):
        raise _error(
            source, f"pvc:// needs a PersistentVolumeClaim name (lower-case RFC 1123), got {claim!r}"
        )
    _check_relative_path(source, path)
    return ModelSource("pvc", path.strip("/"), claim=claim)


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
            raise _error(source, str(error)) from error
    if parsed.scheme == "hf":
        directory = _download_from_hub(source, parsed)
    elif parsed.scheme == "pvc":
        directory = pvc_root() / str(parsed.claim) / parsed.location
    else:
        directory = Path(parsed.location).expanduser()
    return _checked_model_dir(source, directory)


def _checked_model_dir(source: str, directory: Path) -> Path:
    if not directory.is_dir():
        raise _error(source, f"{directory} is not a directory")
    if not (directory / "config.json").is_file():
        raise _error(
            source, f"{directory} has no config.json (expected a Hugging Face-style model directory)"
        )
    return directory.resolve()


def _download_from_hub(source: str, parsed: ModelSource) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as error:
        raise _error(source, "hf:// needs the huggingface_hub package") from error
    try:
        directory = snapshot_download(
            parsed.location,
            revision=parsed.revision,
            cache_dir=cache_root() / "hf",
            allow_patterns=HUB_ALLOW_PATTERNS,
        )
    except Exception as error:  # the hub client raises many types: offline, 404, gated, network
        raise _error(
            source,
            f"could not download {parsed.location}"
            + (f" at revision {parsed.revision}" if parsed.revision else "")
            + f" from the Hugging Face Hub ({type(error).__name__}: {error})",
        ) from error
    return Path(directory)
