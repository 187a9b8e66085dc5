"""Real processes for the router tests: `mili serve` workers, each on its own loopback address (as pods
each own an IP in a cluster), and the real `vllm-router` binary in front of them.

Every address in 127.0.0.0/8 is local on Linux, so the workers can all listen on one port.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from mili_testing import answers_ok, fail_if_exited, require_binary, stop_process, wait_until

SERVED_NAME = "tiny"
BLOCK_SIZE = 16
NUM_KV_BLOCKS = 40  # small, so the KV-aware test can make a worker evict a prompt
READY_TIMEOUT = 120.0

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port_on(host: str) -> int:
    """A TCP port nothing listens on right now at ``host``."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def router_binary() -> str:
    """The `vllm-router` of this venv (the ``test`` extra installs it), else the one on PATH."""
    beside = Path(sys.executable).with_name("vllm-router")
    return str(beside) if beside.exists() else require_binary("vllm-router")


def metric_samples(url: str) -> Samples:
    """Every sample of a Prometheus text endpoint, keyed by (name, sorted labels)."""
    text = httpx.get(url, timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:] if path.exists() else ""


class Worker:
    """`mili serve` on the tiny checkpoint at ``host:port``, as a subprocess."""

    def __init__(
        self,
        model_dir: Path,
        host: str,
        port: int,
        log_path: Path,
        *extra: str,
        kv_events: str | None = None,
        kv_replay: str | None = None,
    ) -> None:
        self.host = host
        self.kv_events = kv_events  # the ZMQ address its KV-event publisher binds, if it publishes
        self.kv_replay = kv_replay  # the ZMQ address its replay socket binds, if it has one
        self.port = port
        self.url = f"http://{host}:{port}"
        self.log_path = log_path
        self.command = [
            str(Path(sys.executable).with_name("mili")),
            "serve",
            "--model", str(model_dir),
            "--served-name", SERVED_NAME,
            "--device", "cpu",
            "--host", host,
            "--port", str(port),
            "--max-model-len", "512",
            "--num-kv-blocks", str(NUM_KV_BLOCKS),
            "--block-size", str(BLOCK_SIZE),
            *(("--kv-events-endpoint", kv_events) if kv_events else ()),
            *(("--kv-events-replay-endpoint", kv_replay) if kv_replay else ()),
            *extra,
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self) -> None:
        def ready() -> bool:
            fail_if_exited(self.process, "mili serve", self.log_path)
            return answers_ok(f"{self.url}/ready")

        wait_until(
            ready,
            f"mili serve on {self.host}:{self.port} to be ready",
            timeout=READY_TIMEOUT,
            diagnostics=lambda: _tail(self.log_path),
        )

    def _sample(self, samples: Samples, name: str) -> float:
        return samples.get((name, (("model_name", SERVED_NAME),)), 0.0)

    def prefix_tokens(self) -> tuple[float, float]:
        """(prompt tokens looked up in the prefix cache, tokens found there) so far."""
        samples = metric_samples(f"{self.url}/metrics")
        return (
            self._sample(samples, "mili_prefix_cache_queried_tokens_total"),
            self._sample(samples, "mili_prefix_cache_hit_tokens_total"),
        )

    def requests_served(self) -> float:
        """Requests this worker finished so far (any finish reason)."""
        samples = metric_samples(f"{self.url}/metrics")
        return sum(value for (name, _), value in samples.items() if name == "mili_requests_total")

    def stop(self) -> None:
        stop_process(self.process)


class Router:
    """The real `vllm-router` binary on ``host``, proxying static worker URLs."""

    def __init__(self, host: str, worker_urls: list[str], log_path: Path, *extra: str) -> None:
        self.binary = router_binary()
        self.port = free_port_on(host)
        self.metrics_port = free_port_on(host)
        self.url = f"http://{host}:{self.port}"
        self.metrics_url = f"http://{host}:{self.metrics_port}/metrics"
        self.log_path = log_path
        self.command = [
            self.binary,
            "--host", host,
            "--port", str(self.port),
            "--prometheus-host", host,
            "--prometheus-port", str(self.metrics_port),
            "--worker-urls", *worker_urls,
            "--worker-startup-check-interval", "1",  # the default (30 s) would dominate the test's time
            *extra,
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Router:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)

        def ready() -> bool:
            fail_if_exited(self.process, "vllm-router", self.log_path)
            return answers_ok(f"{self.url}/readiness")

        wait_until(
            ready, "vllm-router to be ready", timeout=READY_TIMEOUT, diagnostics=lambda: _tail(self.log_path)
        )
        return self

    def decisions(self) -> dict[str, float]:
        """Requests the routing policy sent to each worker URL so far."""
        return {
            dict(labels)["worker"]: value
            for (name, labels), value in metric_samples(self.metrics_url).items()
            if name == "vllm_router_policy_decisions_total"
        }

    def kv_counters(self) -> dict[str, float]:
        """vllm-router's own account of its KV-aware lookups (why a lookup scored or was skipped)."""
        return {
            f"{name}{dict(labels)}": value
            for (name, labels), value in metric_samples(self.metrics_url).items()
            if name.startswith(("vllm_router_kv_", "vllm_router_prefix_routing"))
        }

    def stop(self) -> None:
        stop_process(self.process)
