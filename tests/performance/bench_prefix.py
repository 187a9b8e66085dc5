"""Prefix caching: 32 requests sharing a 1,024-token system prompt with distinct 32-token suffixes.

Requests arrive together; each generates 16 tokens (greedy, ignore_eos), on SmolLM2-135M-Instruct,
after a one-token warm-up on unrelated tokens. Prints, per run: mean time to first token (from
arrival), seconds of the timed generate, output tok/s, and the hit ratio (prompt tokens served from the
prefix cache over all prompt tokens of the timed requests).

    .venv/bin/python tests/performance/bench_prefix.py              # MILI, radix cache off and on
    .venv/bin/python tests/performance/bench_prefix.py --peer vllm  # vLLM then MILI, both caches on

With ``--peer vllm`` the second table has the MILI/vLLM ratios; the script exits 2, saying why, when
vLLM cannot run here.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import EngineRun, print_table, ratio
from _vllm_peer import PeerUnavailable, run_offline
from bench_engine import run_mili

from mili.worker.model_source import DEFAULT_MODEL, resolve_model_source

KV_CACHE_GIB = 1
STEP_TOKENS = 2048


def row(name: str, prefix_cache: str, run: EngineRun, prompt_tokens: int) -> list[object]:
    return [name, prefix_cache, run.mean_ttft, run.seconds, run.throughput, run.cached_tokens / prompt_tokens]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--system-tokens", type=int, default=1024)
    parser.add_argument("--suffix-tokens", type=int, default=32)
    parser.add_argument("--output-tokens", type=int, default=16)
    parser.add_argument("--peer", choices=["vllm"], default=None)
    parser.add_argument("--vllm-dtype", default="bfloat16")
    args = parser.parse_args()
    model_dir = resolve_model_source(args.model)
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    rng = random.Random(0)
    system = [rng.randrange(100, vocab) for _ in range(args.system_tokens)]
    workload = [
        (system + [rng.randrange(100, vocab) for _ in range(args.suffix_tokens)], args.output_tokens)
        for _ in range(args.requests)
    ]
    warmup = [rng.randrange(100, vocab) for _ in range(64)]  # shares nothing with the workload
    prompt_tokens = sum(len(prompt) for prompt, _ in workload)
    headers = ["engine", "prefix cache", "mean TTFT s", "seconds", "output tok/s", "hit ratio"]

    def mili(prefix_caching: bool) -> EngineRun:
        return run_mili(
            args.model, workload, warmup, prefix_caching=prefix_caching,
            cpu_kv_cache_bytes=KV_CACHE_GIB * 2**30, max_num_batched_tokens=STEP_TOKENS,
        )  # fmt: skip

    if args.peer is None:
        off, on = mili(False), mili(True)
        print_table(headers, [row("MILI", "off", off, prompt_tokens), row("MILI", "on", on, prompt_tokens)])
        print(f"TTFT speed-up {off.mean_ttft / on.mean_ttft:.1f}x, total {off.seconds / on.seconds:.1f}x")
        return 0
    try:
        peer = run_offline(
            model_dir, workload, args.vllm_dtype, warmup, prefix_caching=True,
            kv_cache_gib=KV_CACHE_GIB, max_num_batched_tokens=STEP_TOKENS,
        )  # fmt: skip
    except PeerUnavailable as reason:
        print(f"vLLM peer unavailable: {reason}", file=sys.stderr)
        return 2
    on = mili(True)
    peer_name = f"vLLM CPU ({args.vllm_dtype})"
    print_table(
        headers, [row(peer_name, "on", peer, prompt_tokens), row("MILI (defaults)", "on", on, prompt_tokens)]
    )
    print_table(
        ["MILI / vLLM", "mean TTFT", "seconds", "output tok/s", "hit ratio"],
        [["ratio", ratio(on.mean_ttft, peer.mean_ttft), ratio(on.seconds, peer.seconds),
          ratio(on.throughput, peer.throughput), ratio(on.cached_tokens, peer.cached_tokens)]],
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
