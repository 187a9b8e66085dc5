"""Loopback pieces for the autoscaling tests: a real Prometheus (Debian's binary) and real `mili serve`
workers, plus closed-loop load.

Prometheus runs the shipped scrape config (manifests/prometheus/prometheus.yml) with two changes:
short intervals, and file discovery in place of Kubernetes pod discovery. The file targets carry the
same ``__meta_kubernetes_*`` labels pod discovery would give the worker pods, so the shipped relabeling
is what turns them into ``namespace``, ``mili_deployment`` and ``pod`` (Debian builds Prometheus
without Kubernetes discovery, and there is no cluster here anyway).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import yaml

from mili_testing import answers_ok, fail_if_exited, free_port, require_binary, stop_process, wait_until

ROOT = Path(__file__).resolve().parents[3]
SHIPPED_CONFIG = ROOT / "manifests" / "prometheus" / "prometheus.yml"
NAMESPACE = "mili-test"  # the operator tests' namespace, so the operator test can reuse the workers
DEPLOYMENT = "chat"
SERVED_NAME = "tiny"
SCRAPE_INTERVAL = "1s"
READY_TIMEOUT = 90.0

WORKER_JOB = "mili-workers"
ROUTER_JOB = "mili-routers"
OPERATOR_JOB = "mili-operator"


def pod_target(
    address: str,
    pod: str,
    *,
    namespace: str = NAMESPACE,
    deployment: str = DEPLOYMENT,
    app: str = "mili-worker",
    port_name: str = "http",
    ready: bool = True,
) -> dict[str, Any]:
    """A file-discovery target group with the labels Kubernetes pod discovery gives a pod's port."""
    return {
        "targets": [address],
        "labels": {
            "__meta_kubernetes_namespace": namespace,
            "__meta_kubernetes_pod_name": pod,
            "__meta_kubernetes_pod_ready": "true" if ready else "false",
            "__meta_kubernetes_pod_phase": "Running",
            "__meta_kubernetes_pod_container_port_name": port_name,
            "__meta_kubernetes_pod_label_app_kubernetes_io_name": app,
            "__meta_kubernetes_pod_label_mili_dev_deployment": deployment,
            "__meta_kubernetes_pod_annotation_prometheus_io_scrape": "true",
            "__meta_kubernetes_pod_annotation_prometheus_io_path": "/metrics",
        },
    }


def loopback_config(targets_dir: Path, interval: str = SCRAPE_INTERVAL) -> dict[str, Any]:
    """The shipped config with short intervals and file discovery (``targets_dir/JOB.json``)."""
    config = copy.deepcopy(yaml.safe_load(SHIPPED_CONFIG.read_text()))
    config["global"] = {
        "scrape_interval": interval,
        "scrape_timeout": interval,
        "evaluation_interval": interval,
    }
    for job in config["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs"), "the shipped jobs discover pods"
        job["file_sd_configs"] = [{"files": [str(targets_dir / f"{job['job_name']}.json")]}]
    return config


class Worker:
    """`mili serve` on the tiny checkpoint, as a subprocess on a free loopback port."""

    def __init__(self, model_dir: Path, log_path: Path) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.address}"
        self.log_path = log_path
        self.command = [
            str(Path(sys.executable).with_name("mili")),
            "serve",
            "--model", str(model_dir),
            "--served-name", SERVED_NAME,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--max-num-seqs", "1",  # one sequence at a time: concurrent requests queue up at once
            "--num-kv-blocks", "32",
            "--block-size", "16",
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        def ready() -> bool:
            fail_if_exited(self.process, "mili serve", self.log_path)
            return answers_ok(f"{self.url}/ready")

        wait_until(ready, f"mili serve on {self.address} to be ready", timeout=READY_TIMEOUT)

    def stop(self) -> None:
        stop_process(self.process)


class PrometheusServer:
    """Prometheus on a free loopback port with its own TSDB directory; targets set through files."""

    def __init__(self, workdir: Path) -> None:
        self.binary = require_binary("prometheus")
        self.workdir = workdir
        self.targets_dir = workdir / "targets"
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(loopback_config(self.targets_dir)))
        for job in (WORKER_JOB, ROUTER_JOB, OPERATOR_JOB):
            self.set_targets(job, [])
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def set_targets(self, job: str, groups: list[dict[str, Any]]) -> None:
        """Replace a job's targets (atomically: Prometheus watches the file)."""
        staging = self.targets_dir / f".{job}.json.tmp"
        staging.write_text(json.dumps(groups))
        os.replace(staging, self.targets_dir / f"{job}.json")

    def start(self) -> PrometheusServer:
        command = [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        with (self.workdir / "prometheus.log").open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

        def ready() -> bool:
            fail_if_exited(self.process, "prometheus", self.workdir / "prometheus.log")
            return answers_ok(f"{self.url}/-/ready")

        wait_until(ready, "Prometheus to be ready")
        return self

    def stop(self) -> None:
        stop_process(self.process)

    def api(self, path: str, **params: Any) -> Any:
        """GET /api/v1/PATH; the ``data`` of a successful answer (fails the test otherwise)."""
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        payload = response.json()
        assert payload.get("status") == "success", f"{path} {params}: {payload}"
        return payload["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]

    def wait_for_workers(self, count: int) -> None:
        """Until ``count`` worker targets are up and their metrics are queryable."""
        selector = f'{{namespace="{NAMESPACE}",mili_deployment="{DEPLOYMENT}"}}'
        wait_until(
            lambda: len(self.query(f"mili_num_requests_waiting{selector} and on(instance) up == 1")) == count,
            f"{count} scraped workers",
        )


class Load:
    """Closed-loop clients: each sends completions back to back until ``stop()``."""

    def __init__(self, urls: list[str], clients_per_worker: int, max_tokens: int = 12) -> None:
        self.urls = urls
        self.clients_per_worker = clients_per_worker
        self.max_tokens = max_tokens
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.completed = 0
        self.errors: list[str] = []

    def _client(self, url: str) -> None:
        body = {
            "model": SERVED_NAME,
            "prompt": "The quick brown fox",
            "max_tokens": self.max_tokens,
            "ignore_eos": True,
        }
        with httpx.Client(base_url=url, timeout=60) as http:
            while not self.stopping.is_set():
                response = http.post("/v1/completions", json=body)
                if response.status_code != 200:
                    self.errors.append(f"{response.status_code} {response.text[:200]}")
                    return
                self.completed += 1

    def start(self) -> Load:
        self.stopping.clear()
        self.threads = [
            threading.Thread(target=self._client, args=(url,), daemon=True)
            for url in self.urls
            for _ in range(self.clients_per_worker)
        ]
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(60)
        self.threads = []
        assert not self.errors, self.errors


def worker_targets(workers: list[Worker]) -> list[dict[str, Any]]:
    return [pod_target(worker.address, f"{DEPLOYMENT}-{index}") for index, worker in enumerate(workers)]
