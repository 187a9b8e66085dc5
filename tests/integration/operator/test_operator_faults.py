"""Faults against the real operator process: SIGKILL mid-reconcile, an API server gone for 30 s, and a
Prometheus answering garbage, +Inf or nothing. Each test runs its own operator (one at a time)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from integration.operator.conftest import NAMESPACE, OperatorProcess
from integration.operator.test_operator import condition, container, flag

from mili_testing import free_port

OUTAGE_SECONDS = 30
SECRET = "SECRET-BODY-7f3a"  # what a Prometheus body holds; it must never reach status or Events


@contextlib.contextmanager
def running(operator: OperatorProcess) -> Iterator[OperatorProcess]:
    operator.start()
    try:
        yield operator
    finally:
        if operator.process is not None:
            operator.stop()


def new_operator(cluster, tmp_path: Path, kubeconfig: Path | None = None, *args: str) -> OperatorProcess:
    kubeconfig = kubeconfig or cluster.write_kubeconfig(tmp_path / "kubeconfig")
    return OperatorProcess(kubeconfig, tmp_path / "operator.log", tuple(args))


def test_sigkill_mid_reconcile_converges_on_restart_without_duplicates(api, cluster, tmp_path, wait_for):
    posted: list[str] = []
    held = threading.Event()
    release: asyncio.Event | None = None

    async def hold_the_first_service(request: Any) -> None:
        nonlocal release
        name = (
            ((request.data or {}).get("metadata") or {}).get("name")
            if isinstance(request.data, dict)
            else None
        )
        if str(request.method.value) != "POST" or name != "killed":
            return None
        posted.append(request.url.path)
        if request.url.path.endswith("/services") and not held.is_set():
            release = asyncio.Event()
            held.set()
            await asyncio.wait_for(release.wait(), 30)  # the operator is killed while it waits here
        return None

    cluster.intercept(hold_the_first_service)
    operator = new_operator(cluster, tmp_path)
    with running(operator):
        md = api.create_milideployment("killed", {"resources": {"gpus": 0}})
        wait_for(held.is_set, "the operator to be in the middle of creating the Service")
        assert (
            api.get(api.deployment_path("killed")) is not None and api.get(api.service_path("killed")) is None
        )
        operator.kill()
        cluster.on_loop(lambda: release.set())  # the request had reached the server: it completes

        operator.start()
        status = wait_for(
            lambda: (lambda md: md["status"] if md.get("status", {}).get("endpoint") else None)(
                api.get(api.md_path("killed"))
            ),
            "the restarted operator to converge",
        )
        api.delete(api.md_path("killed"))
    assert condition({"status": status}, "Degraded")["status"] == "False"
    deployments = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments"
    assert posted.count(deployments) == 1, "the Deployment was created once, not again after the restart"
    for path in (api.deployment_path("killed"), api.service_path("killed")):
        (owner,) = api.get(path)["metadata"]["ownerReferences"]
        assert owner["uid"] == md["metadata"]["uid"]
    names = [d["metadata"]["name"] for d in api.get(deployments)["items"]]
    assert names.count("killed") == 1


class TcpProxy:
    """A TCP proxy on loopback that can cut every connection and refuse new ones for a while."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {writer, upstream_writer}
        await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))

    async def _open(self) -> None:
        self._server = await asyncio.start_server(
            self._connection, "127.0.0.1", self.port, reuse_address=True
        )

    async def _cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()

    def open(self) -> None:
        self._call(self._open())

    def cut(self) -> None:
        self._call(self._cut())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.cut()
        self.loop.call_soon_threadsafe(self.loop.stop)


def test_an_api_server_gone_for_30s_is_survived_and_caught_up_with(api, cluster, tmp_path, wait_for):
    proxy = TcpProxy(int(cluster.url.rsplit(":", 1)[1]))
    proxy.open()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        cluster.write_kubeconfig(tmp_path / "direct").read_text().replace(cluster.url, proxy.url)
    )
    try:
        with running(new_operator(cluster, tmp_path, kubeconfig)) as operator:
            api.create_milideployment("outage", {"resources": {"gpus": 0}})
            wait_for(lambda: api.get(api.deployment_path("outage")), "the worker Deployment")

            proxy.cut()
            api.patch_spec("outage", {"engine": {"maxNumSeqs": 32}})  # while the operator can't see
            time.sleep(OUTAGE_SECONDS)  # the fault itself: the API server unreachable this long
            assert operator.process is not None and operator.process.poll() is None, "it survived"
            proxy.open()

            wait_for(
                lambda: (
                    flag(container(api.get(api.deployment_path("outage")))["args"], "--max-num-seqs") == "32"
                ),
                "the operator to catch up with the change made during the outage",
                timeout=90,
            )
            wait_for(
                lambda: (api.get(api.md_path("outage")).get("status") or {}).get("observedGeneration") == 2,
                "observedGeneration 2",
            )
            api.delete(api.md_path("outage"))
    finally:
        proxy.close()


class FakePrometheus:
    """An HTTP server in Prometheus's place; ``mode`` says how it answers /api/v1/query."""

    def __init__(self) -> None:
        self.mode = "ok"
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def do_GET(self) -> None:
                mode = owner.mode
                if mode == "silent":  # accepts the query and never answers in time
                    time.sleep(3)
                    return
                if mode == "garbage":
                    self._send(200, f"<html>{SECRET}</html>".encode(), "text/html")
                    return
                good = "0.7" if "kv_cache" in self.path else "0" if "held_requests" in self.path else "4"
                value = {"ok": good, "inf": "+Inf", "word": SECRET}[mode]
                body = {
                    "status": "success",
                    "data": {"resultType": "vector", "result": [{"metric": {}, "value": [0, value]}]},
                }
                self._send(200, json.dumps(body).encode(), "application/json")

            def _send(self, status: int, body: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def prometheus() -> Iterator[FakePrometheus]:
    fake = FakePrometheus()
    yield fake
    fake.close()


def last_decision(api, name: str) -> dict[str, Any]:
    return ((api.get(api.md_path(name)) or {}).get("status", {}).get("autoscaling") or {}).get(
        "lastDecision"
    ) or {}


def scaling(api, name: str) -> dict[str, Any]:
    return condition(api.get(api.md_path(name)), "ScalingActive")


MODES = [
    ("garbage", "answered HTTP 200 without JSON"),
    ("word", "gave a sample that is not a number"),
    ("inf", "gave inf"),
    ("silent", "timed out"),
]


def test_a_prometheus_answering_garbage_inf_or_nothing_holds_the_replicas(
    api, cluster, prometheus, tmp_path, wait_for, monkeypatch
):
    monkeypatch.setenv("MILI_PROMETHEUS_TIMEOUT", "1")
    autoscaling = {"enabled": True, "minReplicas": 1, "maxReplicas": 6, "intervalSeconds": 1}
    with running(new_operator(cluster, tmp_path, None, "--prometheus-url", prometheus.url)):
        api.create_milideployment(
            "held",
            {"resources": {"gpus": 0}, "autoscaling": {**autoscaling, "prometheusUrl": prometheus.url}},
        )
        wait_for(lambda: api.get(api.deployment_path("held")), "the worker Deployment")
        api.patch(api.deployment_path("held"), {"spec": {"replicas": 3}})  # an earlier decision
        for mode, says in MODES:
            prometheus.mode = "ok"
            wait_for(
                lambda: last_decision(api, "held").get("reason", "").endswith("stays at 3"),
                "a round on good metrics",
            )
            prometheus.mode = mode
            found = wait_for(
                lambda: (lambda c: c if c.get("status") == "False" else None)(scaling(api, "held")),
                f"ScalingActive=False with Prometheus answering {mode}",
            )
            assert found["reason"] == "PrometheusUnavailable" and says in found["message"], found
            assert found["message"].endswith("→ holding at 3")
            assert api.get(api.deployment_path("held"))["spec"]["replicas"] == 3, "never scaled on bad data"
            everything = json.dumps(api.get(api.md_path("held"))) + json.dumps(api.events())
            assert SECRET not in everything, "a Prometheus body was copied into status or Events"

        # And a MiliDeployment pointing the operator at a Prometheus it was not given is refused.
        elsewhere = {**autoscaling, "prometheusUrl": "http://elsewhere.example:9090"}
        api.create_milideployment("elsewhere", {"resources": {"gpus": 0}, "autoscaling": elsewhere})
        refused = wait_for(
            lambda: (lambda c: c if c.get("status") == "True" else None)(
                condition(api.get(api.md_path("elsewhere")), "Degraded")
            ),
            "Degraded=True",
        )
        assert refused["message"].startswith(
            "spec.autoscaling.prometheusUrl: 'http://elsewhere.example:9090'"
        )
        assert api.get(api.deployment_path("elsewhere")) is None
        for name in ("held", "elsewhere"):
            api.delete(api.md_path(name))
