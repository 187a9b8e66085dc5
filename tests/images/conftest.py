"""Images built once per session from a copy of the repository, on a local Docker engine.

Not part of the default test run (pyproject's testpaths); run with `pytest tests/images` (`make
test-images`). Needs `docker`, `dockerd` (Debian's docker.io) and `debootstrap`; a torch CPU wheel for
the base image's Python in ``$MILI_TORCH_WHEEL_DIR`` (default /opt/wheels) keeps the worker build from
downloading torch.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from images.docker_engine import DockerEngine, connect_or_start, ensure_base_image, make_build_context
from mili_testing import require_binary

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_TAG = "mili-operator:test"
WORKER_CPU_TAG = "mili-worker:test-cpu"
ROUTER_TAG = "mili-router:test"
BASE_PYTHON_TAG = "cp311"  # Debian bookworm's python3


@pytest.fixture(scope="session")
def docker() -> Iterator[DockerEngine]:
    engine = connect_or_start(require_binary("docker"), shutil.which("dockerd"))
    yield engine
    engine.stop()


@pytest.fixture(scope="session")
def base_image(docker: DockerEngine) -> str:
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        require_binary("debootstrap")
    return ensure_base_image(docker, debootstrap)


@pytest.fixture(scope="session")
def build_context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wheel_dir = Path(os.environ.get("MILI_TORCH_WHEEL_DIR", "/opt/wheels"))
    return make_build_context(
        ROOT,
        tmp_path_factory.mktemp("context"),
        wheel_dir if wheel_dir.is_dir() else None,
        BASE_PYTHON_TAG,
    )


def build(docker: DockerEngine, context: Path, dockerfile: str, tag: str, *args: str) -> str:
    docker.run(
        "build",
        "--network",
        "host",
        "-f",
        str(context / dockerfile),
        "-t",
        tag,
        *args,
        str(context),
        timeout=1500,
    )
    return tag


@pytest.fixture(scope="session")
def operator_image(docker: DockerEngine, base_image: str, build_context: Path) -> str:
    return build(
        docker, build_context, "Dockerfile.operator", OPERATOR_TAG, "--build-arg", f"BASE_IMAGE={base_image}"
    )


@pytest.fixture(scope="session")
def router_image(docker: DockerEngine, base_image: str, build_context: Path) -> str:
    return build(
        docker,
        build_context,
        "Dockerfile.operator",
        ROUTER_TAG,
        "--target",
        "router",
        "--build-arg",
        f"BASE_IMAGE={base_image}",
    )


@pytest.fixture(scope="session")
def worker_cpu_image(docker: DockerEngine, base_image: str, build_context: Path) -> str:
    return build(
        docker,
        build_context,
        "Dockerfile.worker",
        WORKER_CPU_TAG,
        "--target",
        "cpu",
        "--build-arg",
        f"BASE_IMAGE={base_image}",
    )
