"""The worker's CPU image: non-root, the builtin model and our C++ CPU kernels baked in (the worker runs
with ``--kernels cpu``, which refuses to start without them), ready and answering on its own."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import openai
import pytest

from images.docker_engine import DockerEngine
from mili_testing import answers_ok, free_port

READY_TIMEOUT = 180.0
SERVED_NAME = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def worker(docker: DockerEngine, worker_cpu_image: str) -> Iterator[tuple[str, str]]:
    """The image's own command with loopback flags: (base URL, container name)."""
    port = free_port()
    name = f"mili-worker-test-{uuid.uuid4().hex[:8]}"
    docker.run(
        "run", "--detach", "--name", name, "--network", "host", worker_cpu_image, "serve",
        "--host", "127.0.0.1", "--port", str(port), "--served-name", SERVED_NAME, "--kernels", "cpu",
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}", name
    finally:
        docker.run("rm", "--force", name, check=False)


def container_logs(docker: DockerEngine, name: str) -> str:
    logs = docker.run("logs", name, check=False)
    return (logs.stdout + logs.stderr)[-4000:]


def test_worker_image_runs_as_non_root_user(docker: DockerEngine, worker_cpu_image: str):
    user = docker.run("run", "--rm", "--network", "none", "--entrypoint", "id", worker_cpu_image, "-u")
    assert user.stdout.strip() == "1000"


def test_worker_container_becomes_ready_without_converting_the_model(docker: DockerEngine, worker):
    url, name = worker
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if answers_ok(f"{url}/ready"):
            break
        state = docker.run("inspect", "--format", "{{.State.Running}}", name).stdout.strip()
        if state != "true" or time.monotonic() > deadline:
            pytest.fail(f"worker container not ready (running={state}):\n{container_logs(docker, name)}")
        time.sleep(0.5)
    # The model was converted at build time: nothing is converted when the container starts.
    assert "converting builtin model" not in container_logs(docker, name)


def test_worker_container_answers_a_completion(worker):
    url, _ = worker
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=120, max_retries=0)
    completion = client.completions.create(
        model=SERVED_NAME, prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert completion.choices[0].text.strip()
    assert completion.usage is not None and completion.usage.completion_tokens == 8
