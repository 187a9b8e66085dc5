"""Static checks of the Dockerfiles (tests/images builds and runs them): targets, users, build context."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def stages(dockerfile: str) -> dict[str, list[str]]:
    """Instructions per stage (unnamed stages by index), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / dockerfile).read_text())
    result: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if match := re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.IGNORECASE):
            current = match.group(1) or str(len(result))
            result[current] = []
        if current is not None:
            result[current].append(line)
    return result


def allowed_by_dockerignore(path: str) -> bool:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    return "*" in patterns and path.split("/")[0] in allowed


@pytest.mark.parametrize(
    ("dockerfile", "stage", "uid"),
    [
        ("Dockerfile.worker", "cpu", "1000"),
        ("Dockerfile.worker", "gpu", "1000"),
        ("Dockerfile.operator", "router", "1000"),
        ("Dockerfile.operator", "3", "65532"),  # the unnamed last stage, after build, router-build, router
    ],
)
def test_final_stages_run_as_the_manifests_non_root_user(dockerfile: str, stage: str, uid: str):
    instructions = stages(dockerfile)[stage]
    users = [line.split()[1] for line in instructions if line.upper().startswith("USER ")]
    assert users and users[-1] == f"{uid}:{uid}"
    assert any(f"--uid {uid}" in line for line in instructions), "the user needs a passwd entry"


@pytest.mark.parametrize("dockerfile", ["Dockerfile.worker", "Dockerfile.operator"])
def test_every_copied_source_is_in_the_build_context(dockerfile: str):
    for instructions in stages(dockerfile).values():
        for line in instructions:
            words = line.split()
            if words[0].upper() != "COPY" or any(w.startswith("--from") for w in words):
                continue
            sources = [w for w in words[1:-1] if not w.startswith("--")]
            for source in sources:
                if source != "wheel[s]":  # optional: matches nothing without a wheels/ directory
                    assert allowed_by_dockerignore(source), f"{dockerfile}: {source} is excluded"
                    assert (ROOT / source).exists(), f"{dockerfile}: {source} does not exist"


def test_base_images_default_to_public_images():
    text = (ROOT / "Dockerfile.worker").read_text() + (ROOT / "Dockerfile.operator").read_text()
    defaults = dict(re.findall(r"^ARG (\w*IMAGE)=(\S+)", text, re.MULTILINE))
    assert defaults == {
        "BASE_IMAGE": "python:3.11-slim",
        "CUDA_DEVEL_IMAGE": "nvidia/cuda:13.0.0-devel-ubuntu24.04",
        "CUDA_RUNTIME_IMAGE": "nvidia/cuda:13.0.0-runtime-ubuntu24.04",
    }
