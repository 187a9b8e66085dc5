"""Routing benchmark: real `mili serve` workers behind the real `vllm-router`, one policy at a time.

K prompt families, each a long shared system prompt (random token ids) plus a short unique question,
arrive as a Poisson process (streaming completions). Every policy gets fresh workers on their own
loopback addresses (127.0.0.2, ...; one port, as pods): ``cache_aware``, ``kv_aware`` (fed by the
workers' KV events, with replay, as the operator renders it) and ``round_robin`` over ``--replicas``
workers, and a single-replica baseline with the same total KV cache. Per run: the aggregate
prefix-hit ratio (from the workers' own counters), mean and p99 TTFT (client side, to the first
streamed token), request and output-token throughput; then the targets: hit ratio at N replicas ≥ 90 %
of the single replica's, mean TTFT ≥ 2× better than round_robin.

Each worker's KV pool (``--families-per-worker``) holds about K / replicas system prompts plus the
running requests' own blocks, so a policy that keeps a family on one worker finds it cached, and one
that spreads families evicts them. Prompts are token ids, so every policy (kv_aware included) sees
the tokens. The workers share this machine's cores (``--cpu-threads`` each, the cores shared out), as
pods on one node would.

    .venv/bin/python tests/performance/bench_routing.py            # the real run (minutes)
    .venv/bin/python tests/performance/bench_routing.py --smoke    # tiny random model, a few requests
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(Path(__file__).parent))
from _measure import print_table  # noqa: E402
from integration.router.processes import SERVED_NAME, Router, Worker, free_port_on  # noqa: E402

from mili.worker.engine.cpu_info import physical_cores  # noqa: E402
from mili.worker.model_source import DEFAULT_MODEL, resolve_model_source  # noqa: E402

POLICIES = ("cache_aware", "kv_aware", "round_robin")
SINGLE = "single replica"
FIRST_HOST = 2  # 127.0.0.2 onwards; the router takes the next free address


@dataclass(frozen=True)
class Workload:
    prompts: list[list[int]]  # in arrival order
    gaps: list[float]  # seconds before each arrival (exponential: a Poisson process)
    output_tokens: int


@dataclass
class RunResult:
    name: str
    hit_ratio: float
    ttfts: list[float]
    failed: int
    seconds: float
    output_tokens: int

    @property
    def mean_ttft(self) -> float:
        return statistics.fmean(self.ttfts) if self.ttfts else math.nan

    @property
    def p99_ttft(self) -> float:
        return statistics.quantiles(self.ttfts, n=100)[98] if len(self.ttfts) >= 2 else math.nan


def make_workload(args: argparse.Namespace, vocab: int) -> Workload:
    rng = random.Random(args.seed)
    systems = [[rng.randrange(100, vocab) for _ in range(args.system_tokens)] for _ in range(args.families)]
    prompts = [
        rng.choice(systems) + [rng.randrange(100, vocab) for _ in range(args.question_tokens)]
        for _ in range(args.requests)
    ]
    gaps = [rng.expovariate(args.rate) for _ in prompts]
    return Workload(prompts, gaps, args.output_tokens)


async def one_request(client: httpx.AsyncClient, url: str, prompt: list[int], output_tokens: int) -> float:
    """Seconds from sending to the first streamed token."""
    body = {
        "model": SERVED_NAME,
        "prompt": prompt,
        "max_tokens": output_tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
    }
    start = time.perf_counter()
    first = None
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if first is None and line.startswith("data: {") and '"text"' in line:
                first = time.perf_counter() - start
    if first is None:
        raise RuntimeError("the stream ended without a token")
    return first


async def drive(url: str, workload: Workload) -> tuple[list[float], int, float]:
    """Send the workload with its arrival gaps; (TTFTs of the served requests, failures, wall seconds)."""
    async with httpx.AsyncClient(timeout=600) as client:
        tasks = []
        start = time.perf_counter()
        for prompt, gap in zip(workload.prompts, workload.gaps, strict=True):
            await asyncio.sleep(gap)
            tasks.append(asyncio.create_task(one_request(client, url, prompt, workload.output_tokens)))
        results = await asyncio.gather(*tasks, return_exceptions=True)
        seconds = time.perf_counter() - start
    ttfts = [r for r in results if isinstance(r, float)]
    return ttfts, len(results) - len(ttfts), seconds


def hit_ratio(workers: list[Worker], before: list[tuple[float, float]]) -> float:
    """Prompt tokens found in the prefix caches over prompt tokens looked up, all workers together."""
    after = [worker.prefix_tokens() for worker in workers]
    queried = sum(now[0] - then[0] for now, then in zip(after, before, strict=True))
    hits = sum(now[1] - then[1] for now, then in zip(after, before, strict=True))
    return hits / queried if queried else math.nan


def run(
    name: str,
    policy: str,
    replicas: int,
    blocks: int,
    args: argparse.Namespace,
    workload: Workload,
    logs: Path,
) -> RunResult:
    hosts = [f"127.0.0.{FIRST_HOST + i}" for i in range(replicas)]
    port = free_port_on(hosts[0])
    threads = args.cpu_threads if replicas > 1 else None  # one replica has the machine to itself
    engine = (
        "--max-model-len", str(args.max_model_len),
        "--num-kv-blocks", str(blocks),
        *(("--cpu-threads", str(threads)) if threads else ()),
    )  # fmt: skip
    with ExitStack() as stack:
        workers = []
        for host in hosts:
            events, replay = f"tcp://{host}:{free_port_on(host)}", f"tcp://{host}:{free_port_on(host)}"
            log = logs / f"{name}-{host}.log".replace(" ", "-")
            worker = Worker(
                args.model_dir,
                host,
                port,
                log,
                *engine,
                *args.worker_args,
                kv_events=events,
                kv_replay=replay,
            )
            workers.append(worker.start())
            stack.callback(worker.stop)
        for worker in workers:
            worker.wait_ready()
        router_args = ["--policy", policy, "--max-concurrent-requests", "4096"]
        if policy == "kv_aware":
            for worker in workers:
                router_args += ["--kv-event-source", f"{worker.url}={worker.kv_events}"]
                router_args += ["--kv-event-replay-source", f"{worker.url}={worker.kv_replay}"]
            router_args += ["--kv-event-block-size", str(args.block_size), "--kv-event-model", SERVED_NAME]
        router_host = f"127.0.0.{FIRST_HOST + replicas}"
        router = Router(
            router_host, [w.url for w in workers], logs / f"{name}-router.log".replace(" ", "-"), *router_args
        )
        router.start()
        stack.callback(router.stop)
        before = [worker.prefix_tokens() for worker in workers]
        ttfts, failed, seconds = asyncio.run(drive(router.url, workload))
        ratio = hit_ratio(workers, before)
    served = len(ttfts)
    return RunResult(name, ratio, ttfts, failed, seconds, served * workload.output_tokens)


def pool_blocks(args: argparse.Namespace) -> int:
    """KV blocks per worker: ``--families-per-worker`` system prompts plus the running requests' own
    blocks (question and output; a running request of a cached family shares the system prompt's).

    No more: spare blocks would cache further families, and a pool that holds every family hides
    what spreading them costs."""
    system = math.ceil(args.system_tokens / args.block_size)
    own = math.ceil((args.question_tokens + args.output_tokens) / args.block_size) + 1
    return args.families_per_worker * system + args.max_running * own


def report(results: list[RunResult], replicas: int) -> None:
    rows = [
        [
            r.name,
            r.hit_ratio,
            r.mean_ttft,
            r.p99_ttft,
            len(r.ttfts) / r.seconds,
            r.output_tokens / r.seconds,
            r.failed,
        ]
        for r in results
    ]
    print_table(["run", "prefix hit", "mean TTFT s", "p99 TTFT s", "req/s", "out tok/s", "failed"], rows)
    by_name = {r.name: r for r in results}
    single, spread = by_name.get(SINGLE), by_name.get("round_robin")
    print()
    for policy in ("cache_aware", "kv_aware"):
        result = by_name.get(policy)
        if result is None:
            continue
        if single is not None:
            ratio = result.hit_ratio / single.hit_ratio
            verdict = "met" if ratio >= 0.9 else "missed"
            print(
                f"{policy}: hit ratio at {replicas} replicas / single replica = {ratio:.2f}"
                f" (target ≥ 0.90: {verdict})"
            )
        if spread is not None:
            speedup = spread.mean_ttft / result.mean_ttft
            verdict = "met" if speedup >= 2 else "missed"
            print(f"{policy}: mean TTFT round_robin / {policy} = {speedup:.2f}× (target ≥ 2×: {verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help="a model source `mili serve --model` takes")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--families", type=int, default=6, help="prompt families (shared system prompts)")
    parser.add_argument("--system-tokens", type=int, default=1024)
    parser.add_argument("--question-tokens", type=int, default=32)
    parser.add_argument("--output-tokens", type=int, default=16)
    parser.add_argument("--requests", type=int, default=90)
    parser.add_argument("--rate", type=float, default=2.0, help="mean arrivals per second (Poisson)")
    parser.add_argument("--families-per-worker", type=int, default=3, help="system prompts one KV pool holds")
    parser.add_argument("--max-running", type=int, default=4, help="the workers' --max-num-seqs")
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--policies", nargs="+", default=[*POLICIES, "single"], choices=[*POLICIES, "single"])
    parser.add_argument(
        "--cpu-threads",
        type=int,
        help="each worker's --cpu-threads when there are several (default: this machine's physical cores"
        " shared out, at least 1; workers that oversubscribe the cores stall at every parallel region)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny random Qwen3, 12 short requests (a check, not a figure)"
    )
    args = parser.parse_args()
    if args.smoke:
        from mili_testing.tiny_models import build_tiny_model  # a test helper, only for --smoke

        smoke_dir = Path(tempfile.mkdtemp(prefix="bench-routing-")) / "tiny-qwen3"
        args.model = str(build_tiny_model(smoke_dir, "Qwen3ForCausalLM"))
        args.system_tokens, args.requests, args.rate, args.families, args.output_tokens = 96, 12, 6.0, 3, 4
    if args.cpu_threads is None:
        args.cpu_threads = max(1, physical_cores() // args.replicas)
    args.model_dir = Path(args.model) if not args.model.startswith("builtin:") else args.model
    args.max_model_len = args.system_tokens + args.question_tokens + args.output_tokens + args.block_size
    args.worker_args = ("--block-size", str(args.block_size), "--max-num-seqs", str(args.max_running))
    vocab = json.loads((resolve_model_source(args.model) / "config.json").read_text())["vocab_size"]
    workload = make_workload(args, vocab)
    blocks = pool_blocks(args)
    print(
        f"{args.requests} requests, {args.families} families of {args.system_tokens}-token system prompts, "
        f"Poisson {args.rate}/s, {args.output_tokens} output tokens; {blocks} KV blocks and"
        f" {args.cpu_threads} CPU thread(s) per worker"
    )
    logs = Path(tempfile.mkdtemp(prefix="bench-routing-logs-"))
    results = []
    for choice in args.policies:
        if choice == "single":
            results.append(run(SINGLE, "round_robin", 1, blocks * args.replicas, args, workload, logs))
        else:
            results.append(run(choice, choice, args.replicas, blocks, args, workload, logs))
        print(f"  {results[-1].name}: done (logs in {logs})", flush=True)
    report(results, args.replicas)
    if args.json:
        args.json.write_text(
            json.dumps(
                [{**r.__dict__, "mean_ttft": r.mean_ttft, "p99_ttft": r.p99_ttft} for r in results], indent=2
            )
        )


if __name__ == "__main__":
    main()
