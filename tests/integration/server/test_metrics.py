"""/metrics: docs/architecture.md's worker metrics exactly, promtool-valid, scraped by a real Prometheus."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mili_testing import free_port, require_binary

# docs/architecture.md "Metrics" (with the admission metrics): name -> (type, labels besides model_name)
WORKER_METRICS = {
    "mili_requests_rejected": ("counter", {"reason"}),
    "mili_max_queued_requests": ("gauge", set()),
    "mili_num_requests_running": ("gauge", set()),
    "mili_num_requests_waiting": ("gauge", set()),
    "mili_kv_cache_usage_ratio": ("gauge", set()),
    "mili_kv_cache_blocks": ("gauge", set()),
    "mili_prompt_tokens": ("counter", set()),
    "mili_generation_tokens": ("counter", set()),
    "mili_prefix_cache_queried_tokens": ("counter", set()),
    "mili_prefix_cache_hit_tokens": ("counter", set()),
    "mili_preemptions": ("counter", set()),
    "mili_requests": ("counter", {"finish_reason"}),
    "mili_time_to_first_token_seconds": ("histogram", set()),
    "mili_inter_token_latency_seconds": ("histogram", set()),
    "mili_e2e_request_latency_seconds": ("histogram", set()),
    "mili_request_queue_time_seconds": ("histogram", set()),
    "mili_kernel_backend_info": ("gauge", {"backend", "reason"}),
}


def complete(url: str, prompt: str, max_tokens: int = 8, **extra) -> dict:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **extra}
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_exposition_has_exactly_the_designed_metrics(server):
    complete(server.url, "Prefix caching shares the KV", max_tokens=4)
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text)}
    assert {name: family.type for name, family in families.items()} == {
        name: kind for name, (kind, _) in WORKER_METRICS.items()
    }
    for name, (_, extra_labels) in WORKER_METRICS.items():
        for sample in families[name].samples:
            assert sample.labels.get("model_name") == "tiny", sample
            assert set(sample.labels) - {"model_name", "le"} == extra_labels, sample


def test_counters_and_histograms_move_with_traffic(server):
    before = server.metrics()
    result = complete(server.url, "The quick brown fox", max_tokens=6, ignore_eos=True)
    after = server.metrics()

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted({"model_name": "tiny", **labels}.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("mili_generation_tokens_total") == 6
    assert grew("mili_prompt_tokens_total") == result["usage"]["prompt_tokens"]
    assert grew("mili_requests_total", finish_reason="length") == 1
    assert grew("mili_time_to_first_token_seconds_count") == 1
    assert grew("mili_e2e_request_latency_seconds_count") == 1
    assert grew("mili_request_queue_time_seconds_count") == 1
    assert grew("mili_inter_token_latency_seconds_count") == 5
    assert grew("mili_prefix_cache_queried_tokens_total") >= result["usage"]["prompt_tokens"] - 1
    complete(server.url, "The quick brown fox", max_tokens=2)  # same prompt again: its blocks are cached
    assert server.metrics()[("mili_kv_cache_blocks", (("model_name", "tiny"),))] > 0


def test_the_kernel_backend_serving_is_named_with_its_reason(server):
    backends = {key: value for key, value in server.metrics().items() if key[0] == "mili_kernel_backend_info"}
    assert len(backends) == 1, backends
    (((_, labels), value),) = backends.items()
    named = dict(labels)
    # On the CPU, auto serves our C++ kernels when they are built (make venv builds them), else torch.
    assert value == 1
    assert (named["backend"], named["reason"]) in {("cpu", "cpu_kernels"), ("torch", "cpu_unavailable")}, (
        labels
    )


def test_promtool_accepts_the_exposition(server):
    promtool = require_binary("promtool")
    complete(server.url, "hello")
    exposition = httpx.get(f"{server.url}/metrics").content
    check = subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True, timeout=60)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


@pytest.fixture
def prometheus(server, tmp_path: Path):
    """A real Prometheus on loopback scraping the shared server every second."""
    binary = require_binary("prometheus")
    target = server.url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n  - job_name: mili\n    static_configs:\n      - targets: ['{target}']\n"
    )
    url = f"http://127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address={url.removeprefix('http://')}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def promql(prometheus_url: str, query: str) -> list[dict]:
    try:
        response = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": query}, timeout=5)
    except httpx.TransportError:
        return []  # still starting
    return response.json()["data"]["result"] if response.status_code == 200 else []


def test_prometheus_scrapes_live_values_under_load(server, prometheus, poll):
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            complete(server.url, "Continuous batching admits", max_tokens=48, ignore_eos=True)

    workers = [threading.Thread(target=load, daemon=True) for _ in range(6)]
    for worker in workers:
        worker.start()
    queries = {
        "running": 'max_over_time(mili_num_requests_running{model_name="tiny"}[1m]) >= 1',
        "kv usage": 'max_over_time(mili_kv_cache_usage_ratio{model_name="tiny"}[1m]) > 0',
        "ttft p50": "histogram_quantile(0.5, sum by (le) "
        '(rate(mili_time_to_first_token_seconds_bucket{model_name="tiny"}[1m]))) > 0',
    }
    try:
        results = {}
        for name, query in queries.items():
            results[name] = poll(
                lambda q=query: promql(prometheus, q), 60, f"PromQL {name}: {query}", interval=0.5
            )
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=60)
    assert 0 < float(results["kv usage"][0]["value"][1]) <= 1
    assert 0 < float(results["ttft p50"][0]["value"][1]) < 60
    assert results["running"][0]["metric"]["model_name"] == "tiny"
