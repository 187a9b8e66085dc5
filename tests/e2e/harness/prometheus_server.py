"""A real Prometheus on loopback whose scrape targets come from a file (file-based service discovery).

The pod runner writes the workers' and the routers' files; each target carries the labels the shipped
Kubernetes relabeling gives a pod (`namespace`, `mili_deployment`, `pod`), so the cluster's PromQL works.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from mili_testing import answers_ok, require_binary, stop_process

SCRAPE_INTERVAL = "1s"


def write_config(path: Path, jobs: Mapping[str, Path]) -> None:
    """The shipped config's jobs (workers, routers, operator), each from its targets file, every second."""
    config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": [
            {
                "job_name": job,
                "honor_labels": job == "mili-operator",  # as in manifests/prometheus/prometheus.yml
                "scrape_interval": SCRAPE_INTERVAL,
                "scrape_timeout": SCRAPE_INTERVAL,
                "file_sd_configs": [{"files": [str(targets)], "refresh_interval": SCRAPE_INTERVAL}],
            }
            for job, targets in jobs.items()
        ],
    }
    path.write_text(json.dumps(config, indent=2))  # YAML is a superset of JSON


def write_targets(path: Path, targets: Sequence[tuple[str, Mapping[str, str]]]) -> None:
    """Replace the file-SD target list atomically: ``[(host:port, labels), ...]``."""
    groups = [{"targets": [address], "labels": dict(labels)} for address, labels in targets]
    staging = path.with_suffix(".tmp")
    staging.write_text(json.dumps(groups, indent=2))
    os.replace(staging, path)


class PrometheusServer:
    """`prometheus` as a subprocess on 127.0.0.1:``port``, storage and log under ``workdir``."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir = workdir
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.targets_file = workdir / "targets.json"
        self.operator_targets_file = workdir / "operator-targets.json"
        self.router_targets_file = workdir / "router-targets.json"
        self.log_path = workdir / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        binary = require_binary("prometheus")
        jobs = {
            "mili-workers": self.targets_file,
            "mili-routers": self.router_targets_file,
            "mili-operator": self.operator_targets_file,
        }
        for targets in jobs.values():
            write_targets(targets, [])
        config = self.workdir / "prometheus.yml"
        write_config(config, jobs)
        command = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1h",
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not become ready:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.1)

    def _ready(self) -> bool:
        return answers_ok(f"{self.url}/-/ready", timeout=1)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (raises on a query error)."""
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5)
        response.raise_for_status()
        body = response.json()
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus query {expr!r} failed: {body}")
        return body["data"]["result"]

    def stop(self) -> None:
        stop_process(self.process, grace=10)
        self.process = None
