"""Serving benchmark in the manner of ``vllm bench serve``: N streaming requests against a running
OpenAI-compatible server, with Poisson arrivals at a given rate (or all at once), random input and
output lengths; reports completed/failed, request and token throughput, TTFT, TPOT and ITL.

    python tests/performance/bench_serving.py --base-url http://127.0.0.1:8000 \\
        --num-prompts 100 --request-rate 4 --input-len 128 --output-len 64

Prompts are random words (their token count is what the server reports in ``usage``); outputs are
forced to their drawn length with ``ignore_eos``, as vLLM's random dataset does. Requests the server
sheds (HTTP 503, say a full queue) are counted apart from failures. ``--overload-factor 4`` runs a
second time at 4× the rate and compares: admitted requests' p99 TTFT against the first run's, what
was shed, and any other error. Not collected by CI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _measure import ServerFailed, free_port, mean, print_table, ratio, serving

VOCABULARY = (
    "the of and to in is was for on that with as by at from his an were are which this be or had not but "
    "one have they you all their has been more when there can who time would out so said what up its about "
    "into than them only other new some could these two may first then do any like my now over such our man "
    "model token cache block batch stream server engine request kernel memory queue prefix scale paged"
)
WORDS = VOCABULARY.split()


@dataclass
class RequestResult:
    ok: bool = False
    shed: bool = False  # the server answered 503 (at capacity): refused, not failed
    error: str = ""
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft: float = 0.0  # seconds to the first token
    latency: float = 0.0  # seconds to the last byte
    itl: list[float] = field(default_factory=list)  # gaps between content chunks


@dataclass
class Summary:
    completed: int
    shed: int
    failed: int
    duration_s: float
    request_throughput: float
    output_token_throughput: float
    total_token_throughput: float
    mean_ttft_ms: float
    median_ttft_ms: float
    p99_ttft_ms: float
    mean_tpot_ms: float
    median_tpot_ms: float
    p99_tpot_ms: float
    mean_itl_ms: float
    median_itl_ms: float
    p99_itl_ms: float


def random_lengths(rng: random.Random, mean: int, range_ratio: float, count: int) -> list[int]:
    low, high = max(1, int(mean * (1 - range_ratio))), max(1, int(mean * (1 + range_ratio)))
    return [rng.randint(low, high) for _ in range(count)]


def random_prompt(rng: random.Random, num_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(num_words))


async def poisson_arrivals(count: int, rate: float, rng: random.Random):
    """Yield request indices, spaced by exponential gaps of mean 1/rate (all at once when rate is inf)."""
    for index in range(count):
        yield index
        if rate != float("inf") and index < count - 1:
            await asyncio.sleep(rng.expovariate(rate))


async def send(
    client: httpx.AsyncClient, args: argparse.Namespace, model: str, prompt: str, max_tokens: int
) -> RequestResult:
    result = RequestResult()
    body: dict = {"model": model, "max_tokens": max_tokens, "stream": True, "temperature": 0.0}
    body |= {"ignore_eos": True, "stream_options": {"include_usage": True}}
    if args.endpoint == "chat":
        path, body["messages"] = "/v1/chat/completions", [{"role": "user", "content": prompt}]
    else:
        path, body["prompt"] = "/v1/completions", prompt
    started = last = time.perf_counter()
    try:
        async with client.stream("POST", f"{args.base_url}{path}", json=body) as response:
            if response.status_code != 200:
                result.shed = response.status_code == 503
                result.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    result.error = chunk["error"].get("message", "error event")
                    return result
                if chunk.get("usage"):
                    result.prompt_tokens = chunk["usage"]["prompt_tokens"]
                    result.output_tokens = chunk["usage"]["completion_tokens"]
                text = "".join(
                    (c.get("text") if args.endpoint != "chat" else (c.get("delta") or {}).get("content"))
                    or ""
                    for c in chunk.get("choices", [])
                )
                if text:
                    now = time.perf_counter()
                    if result.ttft == 0.0:
                        result.ttft = now - started
                    else:
                        result.itl.append(now - last)
                    last = now
        result.latency = time.perf_counter() - started
        result.ok = result.ttft > 0.0
        if not result.ok:
            result.error = "no tokens received"
    except (httpx.HTTPError, json.JSONDecodeError) as error:
        result.error = f"{type(error).__name__}: {error}"
    return result


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(results: list[RequestResult], duration: float) -> Summary:
    done = [r for r in results if r.ok]
    ttfts = [r.ttft * 1000 for r in done]
    tpots = [(r.latency - r.ttft) / (r.output_tokens - 1) * 1000 for r in done if r.output_tokens > 1]
    itls = [gap * 1000 for r in done for gap in r.itl]
    output_tokens = sum(r.output_tokens for r in done)
    prompt_tokens = sum(r.prompt_tokens for r in done)

    shed = sum(r.shed for r in results)
    return Summary(
        completed=len(done),
        shed=shed,
        failed=len(results) - len(done) - shed,
        duration_s=duration,
        request_throughput=len(done) / duration,
        output_token_throughput=output_tokens / duration,
        total_token_throughput=(prompt_tokens + output_tokens) / duration,
        mean_ttft_ms=mean(ttfts),
        median_ttft_ms=percentile(ttfts, 50),
        p99_ttft_ms=percentile(ttfts, 99),
        mean_tpot_ms=mean(tpots),
        median_tpot_ms=percentile(tpots, 50),
        p99_tpot_ms=percentile(tpots, 99),
        mean_itl_ms=mean(itls),
        median_itl_ms=percentile(itls, 50),
        p99_itl_ms=percentile(itls, 99),
    )


async def served_model(client: httpx.AsyncClient, base_url: str) -> str:
    response = await client.get(f"{base_url}/v1/models")
    response.raise_for_status()
    return response.json()["data"][0]["id"]


async def benchmark(args: argparse.Namespace) -> tuple[Summary, list[RequestResult]]:
    rng = random.Random(args.seed)
    input_lens = random_lengths(rng, args.input_len, args.range_ratio, args.num_prompts)
    output_lens = random_lengths(rng, args.output_len, args.range_ratio, args.num_prompts)
    prompts = [random_prompt(rng, n) for n in input_lens]
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=args.max_concurrency or args.num_prompts + 8)
    limiter = asyncio.Semaphore(args.max_concurrency or args.num_prompts)
    async with httpx.AsyncClient(timeout=args.timeout, headers=headers, limits=limits) as client:
        model = args.model or await served_model(client, args.base_url)

        async def one(index: int) -> RequestResult:
            async with limiter:
                return await send(client, args, model, prompts[index], output_lens[index])

        started = time.perf_counter()
        tasks = [
            asyncio.create_task(one(i))
            async for i in poisson_arrivals(args.num_prompts, args.request_rate, rng)
        ]
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - started
    return summarize(results, duration), results


def print_summary(args: argparse.Namespace, summary: Summary, results: list[RequestResult]) -> None:
    rate = "inf" if args.request_rate == float("inf") else f"{args.request_rate:g}"
    print(f"============ Serving Benchmark Result (rate {rate} req/s) ============")
    rows = [
        ("Successful requests", summary.completed),
        ("Shed requests (HTTP 503)", summary.shed),
        ("Failed requests", summary.failed),
        ("Benchmark duration (s)", f"{summary.duration_s:.2f}"),
        ("Request throughput (req/s)", f"{summary.request_throughput:.2f}"),
        ("Output token throughput (tok/s)", f"{summary.output_token_throughput:.2f}"),
        ("Total token throughput (tok/s)", f"{summary.total_token_throughput:.2f}"),
    ]
    for metric in ("ttft", "tpot", "itl"):
        for stat in ("mean", "median", "p99"):
            rows.append(
                (
                    f"{stat.capitalize()} {metric.upper()} (ms)",
                    f"{getattr(summary, f'{stat}_{metric}_ms'):.2f}",
                )
            )
    for name, value in rows:
        print(f"{name:<40}{value:>12}")
    errors = sorted({r.error for r in results if not r.ok and not r.shed})
    for error in errors[:5]:
        print(f"error: {error}", file=sys.stderr)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default=None, help="served model name (default: the server's first)")
    parser.add_argument("--endpoint", choices=("completions", "chat"), default="completions")
    parser.add_argument("--num-prompts", type=int, default=100)
    parser.add_argument(
        "--request-rate", type=float, default=float("inf"), help="req/s, Poisson; inf = all at once"
    )
    parser.add_argument("--max-concurrency", type=int, default=None)
    parser.add_argument("--input-len", type=int, default=128, help="mean prompt length in words")
    parser.add_argument("--output-len", type=int, default=64, help="mean output length in tokens")
    parser.add_argument("--range-ratio", type=float, default=0.5, help="lengths uniform in mean × [1-r, 1+r]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--result-json", default=None, help="also write the summary here")
    parser.add_argument(
        "--overload-factor", type=float, default=None,
        help="then run again at this many times --request-rate and compare (admission control check)",
    )  # fmt: skip
    peer = parser.add_argument_group("peer comparison (--peer vllm: starts both servers itself)")
    peer.add_argument("--peer", choices=("vllm",), default=None)
    peer.add_argument(
        "--serve-model", default="builtin:smollm2-135m-instruct", help="model source both serve"
    )
    peer.add_argument("--request-rates", default="1,4,inf", help="comma-separated req/s, run in this order")
    peer.add_argument("--vllm-dtype", default="bfloat16")
    peer.add_argument("--kv-cache-gib", type=int, default=2, help="KV pool of each server")
    peer.add_argument("--max-num-batched-tokens", type=int, default=2048, help="step budget of each server")
    return parser.parse_args(argv)


OVERLOAD_MAX_TTFT_RATIO = 2.0  # admitted requests' p99 TTFT under overload, against at capacity


def overload_check(args: argparse.Namespace, at_capacity: Summary) -> int:
    """Run at ``overload_factor`` × the rate; 0 when the excess was shed with 503, nothing else
    failed, and admitted requests' p99 TTFT stayed within ``OVERLOAD_MAX_TTFT_RATIO`` ×."""
    overload = argparse.Namespace(**vars(args))
    overload.request_rate = args.request_rate * args.overload_factor
    overload.num_prompts = int(args.num_prompts * args.overload_factor)
    summary, results = asyncio.run(benchmark(overload))
    print_summary(overload, summary, results)
    ratio = summary.p99_ttft_ms / at_capacity.p99_ttft_ms if at_capacity.p99_ttft_ms else float("inf")
    print(f"============ Overload at {args.overload_factor:g}× the rate ============")
    print("| run | rate (req/s) | sent | completed | shed (503) | other errors | p99 TTFT (ms) |")
    print("|---|---|---|---|---|---|---|")
    for name, run_args, run in (("capacity", args, at_capacity), ("overload", overload, summary)):
        sent = run.completed + run.shed + run.failed
        print(f"| {name} | {run_args.request_rate:g} | {sent} | {run.completed} | {run.shed} | {run.failed} "
              f"| {run.p99_ttft_ms:.0f} |")  # fmt: skip
    print(f"p99 TTFT ratio (overload / capacity): {ratio:.2f} (limit {OVERLOAD_MAX_TTFT_RATIO:g})")
    passed = ratio <= OVERLOAD_MAX_TTFT_RATIO and summary.failed == 0 and summary.shed > 0
    print("overload check:", "PASS" if passed else "FAIL")
    return 0 if passed else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.peer == "vllm":
        return compare_servers(args)
    summary, results = asyncio.run(benchmark(args))
    print_summary(args, summary, results)
    if args.result_json:
        with open(args.result_json, "w") as out:
            json.dump(
                {"args": vars(args) | {"request_rate": str(args.request_rate)}, **asdict(summary)},
                out,
                indent=2,
            )
    if args.overload_factor is not None:
        return overload_check(args, summary)
    return 0 if summary.failed == 0 else 1


COMPARED = ("output_token_throughput", "mean_ttft_ms", "p99_ttft_ms", "mean_itl_ms")


@dataclass
class ServerRun:
    """One server at one request rate: the client's summary and the server tree's peak RSS."""

    summary: Summary
    peak_rss: int


def compare_servers(args: argparse.Namespace) -> int:
    """``vllm serve`` then ``mili serve`` on the same model, prompts and rates; one table of both and
    the MILI/vLLM ratios. 2 when the peer cannot run here, 1 when a request failed."""
    from _vllm_peer import PeerUnavailable, peer_env, serve_command

    from mili.worker.model_source import resolve_model_source

    model_dir = resolve_model_source(args.serve_model)
    rates = [float(rate) for rate in args.request_rates.split(",")]
    budget = str(args.max_num_batched_tokens)
    mili_argv = [
        str(Path(sys.executable).parent / "mili"), "serve", "--model", str(model_dir), "--host", "127.0.0.1",
        "--cpu-kv-cache-bytes", str(args.kv_cache_gib * 2**30), "--max-num-batched-tokens", budget,
    ]  # fmt: skip
    try:
        vllm_port = free_port()
        vllm_argv = serve_command(model_dir, vllm_port, args.vllm_dtype, True, args.max_num_batched_tokens)
        vllm = run_server(args, vllm_argv, vllm_port, "/health", peer_env(args.kv_cache_gib), rates, "vllm")
    except (PeerUnavailable, ServerFailed) as reason:
        print(f"vLLM peer unavailable: {reason}", file=sys.stderr)
        return 2
    mili_port = free_port()
    mili = run_server(args, [*mili_argv, "--port", str(mili_port)], mili_port, "/ready", None, rates, "mili")
    print_server_table(args, rates, vllm, mili)
    return 0 if all(run.summary.failed == 0 for run in [*vllm, *mili]) else 1


def run_server(
    args: argparse.Namespace, argv: list[str], port: int, ready_path: str, env: dict | None,
    rates: list[float], name: str,
) -> list[ServerRun]:  # fmt: skip
    """Start one server, run the benchmark at each rate in turn, stop it."""
    from _vllm_peer import log_path

    runs = []
    with serving(argv, port, log_path(f"serve-{name}"), ready_path, env) as server:
        for rate in rates:
            server.memory.reset()
            run_args = argparse.Namespace(**{**vars(args), "base_url": server.base_url, "request_rate": rate})
            summary, results = asyncio.run(benchmark(run_args))
            print_summary(run_args, summary, results)
            runs.append(ServerRun(summary, server.memory.peak))
    return runs


def print_server_table(
    args: argparse.Namespace, rates: list[float], vllm: list[ServerRun], mili: list[ServerRun]
) -> None:
    headers = ["server", "rate req/s", "done/failed", "out tok/s", "mean TTFT ms", "p99 TTFT ms",
               "mean ITL ms", "peak RSS MiB"]  # fmt: skip
    rows: list[list[object]] = []
    for name, runs in ((f"vLLM CPU ({args.vllm_dtype})", vllm), ("MILI (defaults)", mili)):
        for rate, run in zip(rates, runs, strict=True):
            s = run.summary
            rows.append([name, f"{rate:g}", f"{s.completed}/{s.failed}",
                         *(getattr(s, field) for field in COMPARED), run.peak_rss // 2**20])  # fmt: skip
    print_table(headers, rows)
    ratios = [
        [f"{rate:g}", *(ratio(getattr(m.summary, f), getattr(v.summary, f)) for f in COMPARED),
         ratio(m.peak_rss, v.peak_rss)]
        for rate, v, m in zip(rates, vllm, mili, strict=True)
    ]  # fmt: skip
    print_table(["MILI / vLLM at rate", "out tok/s", "mean TTFT", "p99 TTFT", "mean ITL", "peak RSS"], ratios)


if __name__ == "__main__":
    sys.exit(main())
