"""The operator image, run like the operator Deployment runs it (uid 65532, read-only root filesystem),
against kmock's emulator on loopback: it reconciles the CPU sample."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from e2e.harness.cluster import ROOT, kustomize
from e2e.harness.local_cluster import operator_harness
from images.docker_engine import DockerEngine
from mili_testing import answers_ok

DEADLINE = 60.0


@pytest.fixture(scope="module")
def emulated() -> Iterator[Any]:
    cluster = operator_harness().EmulatedCluster()
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def operator_container(
    docker: DockerEngine, operator_image: str, emulated: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """The operator container with the Deployment's security settings: (healthz URL, container name)."""
    kubeconfig = emulated.write_kubeconfig(tmp_path_factory.mktemp("kube") / "config")
    kubeconfig.chmod(0o644)  # readable by the container's uid 65532
    deployment = yaml.safe_load((ROOT / "manifests/operator/deployment.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    harness = operator_harness()
    liveness, metrics = harness.free_port(), harness.free_port()
    name = f"mili-operator-test-{uuid.uuid4().hex[:8]}"
    docker.run(
        "run", "--detach", "--name", name, "--network", "host", "--read-only", "--user", "65532:65532",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--volume", f"{kubeconfig}:/kube/config:ro", "--env", "KUBECONFIG=/kube/config",
        operator_image, *container["args"], "--liveness-host", "127.0.0.1",
        "--liveness-port", str(liveness), "--metrics-port", str(metrics),
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{liveness}/healthz", name
    finally:
        docker.run("rm", "--force", name, check=False)


def wait_until(condition, what: str, docker: DockerEngine, name: str) -> Any:
    deadline = time.monotonic() + DEADLINE
    while not (value := condition()):
        if time.monotonic() > deadline:
            logs = docker.run("logs", name, check=False)
            pytest.fail(f"timed out waiting for {what}:\n{(logs.stdout + logs.stderr)[-4000:]}")
        time.sleep(0.25)
    return value


def test_operator_container_reconciles_the_cpu_sample(docker: DockerEngine, emulated, operator_container):
    url, name = operator_container
    wait_until(lambda: answers_ok(url), "the operator's /healthz", docker, name)
    harness = operator_harness()
    api = harness.Api(emulated.url)
    (sample,) = [doc for doc in kustomize(ROOT / "manifests/samples/cpu") if doc["kind"] == "MiliDeployment"]
    sample_name = sample["metadata"]["name"]
    parent = api.create_milideployment(sample_name, sample["spec"])

    deployment = wait_until(
        lambda: api.get(api.deployment_path(sample_name)), "the worker Deployment", docker, name
    )
    (owner,) = deployment["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == (
        "MiliDeployment",
        parent["metadata"]["uid"],
        True,
    )
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "mili-worker:0.1.0"  # the operator's default worker image
    assert api.get(api.service_path(sample_name)) is not None

    def endpoint() -> str | None:
        return ((api.get(api.md_path(sample_name)) or {}).get("status") or {}).get("endpoint")

    assert wait_until(endpoint, "the MiliDeployment's status", docker, name) == (
        f"http://{sample_name}.{harness.NAMESPACE}.svc:8000/v1"
    )
    assert docker.run("inspect", "--format", "{{.State.Running}}", name).stdout.strip() == "true"
