"""The real `mili-operator` process against kmock's Kubernetes emulator on loopback.

The emulator runs on its own event loop in a thread, so tests are plain synchronous code that talks to
it over HTTP like kubectl would; the operator is a subprocess with a kubeconfig pointing at it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp.web
import httpx
import kmock
import pytest

from mili_testing import answers_ok, fail_if_exited, free_port, stop_process, wait_until

NAMESPACE = "mili-test"
MILI_RESOURCE = "mili.dev/v1alpha1/milideployments"
DEADLINE_SECONDS = 15.0

T = TypeVar("T")


Interceptor = Callable[[Any], Awaitable["aiohttp.web.StreamResponse | None"]]


class NamingEmulator(kmock.KubernetesEmulator):
    """The emulator, plus the API server's handling of ``metadata.generateName`` (Kopf's Events use it),
    a log of every request (method, path), and interceptors that may answer a request instead (an API
    server's validation, a slow write)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.request_log: list[tuple[str, str]] = []
        self.interceptors: list[Interceptor] = []

    async def _handle(self, request: Any) -> Any:
        self.request_log.append((str(request.method.value).upper(), request.url.path))
        for interceptor in list(self.interceptors):
            response = await interceptor(request)
            if response is not None:
                return response
        metadata = request.data.get("metadata") if isinstance(request.data, dict) else None
        named = isinstance(metadata, dict) and (metadata.get("name") or not metadata.get("generateName"))
        if request.method == "POST" and isinstance(metadata, dict) and not named:
            metadata["name"] = metadata["generateName"] + uuid.uuid4().hex[:8]
        return await super()._handle(request)


def api_refusal(status: int, reason: str, message: str) -> aiohttp.web.Response:
    """An answer shaped like the API server's ``Status`` on a refused write."""
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message}
    return aiohttp.web.json_response({**body, "reason": reason, "code": status}, status=status)


class EmulatedCluster:
    """kmock's KubernetesEmulator serving on 127.0.0.1 from a background thread."""

    def __init__(self) -> None:
        self.url = ""
        self.emulator: kmock.KubernetesEmulator | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with NamingEmulator() as emulator, kmock.Server(emulator, host="127.0.0.1") as server:
            emulator.resources.load_bundled()
            emulator.resources[MILI_RESOURCE] = kmock.ResourceInfo(
                namespaced=True,
                kind="MiliDeployment",
                singular="milideployment",
                shortnames=["mili"],
                verbs=["get", "list", "watch", "create", "update", "patch", "delete"],
                subresources=["status", "scale"],
            )
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("kmock emulator did not start")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def on_loop(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the emulator's loop (its object store is not thread-safe)."""

        async def call() -> T:
            return fn()

        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(10)

    def intercept(self, interceptor: Interceptor) -> None:
        """Let ``interceptor`` (a coroutine function of the request) answer requests first."""
        assert self.emulator is not None
        emulator = self.emulator
        self.on_loop(lambda: emulator.interceptors.append(interceptor))

    def requests(self, method: str, path: str) -> int:
        """How many ``method`` requests for exactly ``path`` the emulator has served so far."""
        assert self.emulator is not None
        return sum(1 for logged in list(self.emulator.request_log) if logged == (method, path))

    def versions(self, resource: str, name: str, namespace: str = NAMESPACE) -> int:
        """How many versions (creations and writes) the emulator has stored for one object."""
        assert self.emulator is not None
        emulator = self.emulator
        return self.on_loop(lambda: len(emulator.objects[resource, namespace, name].history))

    def write_kubeconfig(self, path: Path) -> Path:
        path.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters: [{{name: kmock, cluster: {{server: '{self.url}'}}}}]\n"
            "users: [{name: kmock, user: {}}]\n"
            "contexts: [{name: kmock, context: {cluster: kmock, user: kmock, namespace: "
            + NAMESPACE
            + "}}]\n"
            "current-context: kmock\n"
        )
        return path


class Api:
    """A tiny synchronous client of the emulator for the tests (what kubectl does)."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=10)

    @staticmethod
    def md_path(name: str | None = None) -> str:
        base = f"/apis/mili.dev/v1alpha1/namespaces/{NAMESPACE}/milideployments"
        return f"{base}/{name}" if name else base

    @staticmethod
    def deployment_path(name: str) -> str:
        return f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{name}"

    @staticmethod
    def service_path(name: str) -> str:
        return f"/api/v1/namespaces/{NAMESPACE}/services/{name}"

    def get(self, path: str) -> dict[str, Any] | None:
        response = self.http.get(path)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()

    def create_milideployment(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {
            "apiVersion": "mili.dev/v1alpha1",
            "kind": "MiliDeployment",
            # The emulator assigns none of these; Kopf and owner references need them.
            "metadata": {
                "name": name,
                "namespace": NAMESPACE,
                "uid": str(uuid.uuid4()),
                "resourceVersion": "1",
                "generation": 1,
            },
            "spec": spec,
        }
        response = self.http.post(self.md_path(), json=body)
        response.raise_for_status()
        return response.json()

    def patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        response = self.http.patch(path, json=patch, headers={"Content-Type": "application/merge-patch+json"})
        response.raise_for_status()
        return response.json()

    def patch_spec(self, name: str, spec_patch: dict[str, Any]) -> None:
        generation = (self.get(self.md_path(name)) or {})["metadata"].get("generation", 1)
        self.patch(self.md_path(name), {"metadata": {"generation": generation + 1}, "spec": spec_patch})

    def delete(self, path: str) -> None:
        self.http.delete(path).raise_for_status()

    def events(self) -> list[dict[str, Any]]:
        response = self.http.get(f"/api/v1/namespaces/{NAMESPACE}/events")
        response.raise_for_status()
        return response.json()["items"]


def wait_for(condition: Callable[[], T], what: str, timeout: float = DEADLINE_SECONDS) -> T:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    return wait_until(condition, what, timeout)


class OperatorProcess:
    """`mili-operator` as a subprocess; its log is kept for assertions."""

    def __init__(self, kubeconfig: Path, log_path: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.extra_args = extra_args
        self.metrics_port = free_port()
        self.liveness_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        command = [
            str(Path(sys.executable).with_name("mili-operator")),  # the installed console script
            "--all-namespaces",  # as deployed (namespaced mode lists namespaces, which kmock cannot)
            "--worker-image",
            "mili-worker:test",
            "--liveness-host",
            "127.0.0.1",
            "--liveness-port",
            str(self.liveness_port),
            "--metrics-port",
            str(self.metrics_port),
            "--verbose",
            *self.extra_args,
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._live, "the operator's liveness endpoint", timeout=30)

    def _live(self) -> bool:
        fail_if_exited(self.process, "mili-operator", self.log_path)
        return answers_ok(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye, whatever it was doing."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)
        self.process = None

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text


@pytest.fixture(scope="module")
def operator(cluster: EmulatedCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    workdir = tmp_path_factory.mktemp("operator")
    process = OperatorProcess(cluster.write_kubeconfig(workdir / "kubeconfig"), workdir / "operator.log")
    process.start()
    yield process
    process.stop()


@pytest.fixture(name="wait_for")
def wait_for_fixture() -> Callable[..., Any]:
    """``wait_for(condition, what, timeout=...)``: poll a real condition with a deadline."""
    return wait_for
