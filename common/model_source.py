"""Model sources, parsed: the syntax of ``model.source`` strings, checked without disk, network or torch.

Accepted forms (the same ones ``MiliDeployment.spec.model.source`` takes):

- ``hf://ORG/NAME[@REV]``: a Hugging Face Hub repository, at a revision.
- ``pvc://CLAIM/PATH``: a path inside a PersistentVolumeClaim.
- ``file:///PATH``: an absolute local path.
- ``builtin:NAME``: a model MILI ships.
- a plain local path (absolute or relative), for development.

The operator validates specs with ``parse_model_source``; the worker's ``mili.worker.model_source``
resolves a parsed source into a local directory (downloading or converting).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "builtin:smollm2-135m-instruct"

ACCEPTED_FORMS = "hf://ORG/NAME[@REV], pvc://CLAIM/PATH, file:///PATH, builtin:NAME or a local directory path"

# Kubernetes object names (RFC 1123 label) for PVC claims; Hub repo ids are ORG/NAME of [A-Za-z0-9._-].
_CLAIM_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_HUB_NAME_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


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


def model_source_error(source: str, problem: str) -> ModelSourceError:
    """An error naming ``source``, what is wrong with it, and the accepted forms."""
    return ModelSourceError(f"model source {source!r}: {problem}; accepted forms: {ACCEPTED_FORMS}")


def _check_relative_path(source: str, path: str) -> None:
    if ".." in Path(path).parts:
        raise model_source_error(source, "the path may not contain '..'")


def parse_model_source(source: str) -> ModelSource:
    """Check the syntax of ``source`` and split it into parts; touches neither disk nor network."""
    if not isinstance(source, str) or not source.strip():
        raise model_source_error(str(source), "it is empty")
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
            raise model_source_error(
                source, "file:// takes an absolute path with an empty host, as in file:///models/x"
            )
        return ModelSource("file", path)
    if source.startswith("builtin:"):
        name = source[len("builtin:") :]
        if not name:
            raise model_source_error(source, "builtin: needs a model name")
        return ModelSource("builtin", name)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", source):
        raise model_source_error(source, "unknown scheme")
    return ModelSource("path", source)


def _parse_hub(source: str, rest: str) -> ModelSource:
    repo_id, _, revision = rest.partition("@")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(_HUB_NAME_PART.match(part) for part in parts):
        raise model_source_error(
            source, "hf:// needs a repository id ORG/NAME (letters, digits, '.', '_', '-')"
        )
    if "@" in rest and not revision:
        raise model_source_error(source, "hf://ORG/NAME@ needs a revision after '@'")
    return ModelSource("hf", repo_id, revision or None)


def _parse_pvc(source: str, rest: str) -> ModelSource:
    claim, _, path = rest.partition("/")
    if not _CLAIM_NAME.match(claim):
        raise model_source_error(
            source, f"pvc:// needs a PersistentVolumeClaim name (lower-case RFC 1123), got {claim!r}"
        )
    _check_relative_path(source, path)
    return ModelSource("pvc", path.strip("/"), claim=claim)
