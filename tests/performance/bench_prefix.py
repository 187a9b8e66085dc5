"""Prefix caching: 32 requests sharing a 1,024-token system prompt with distinct 32-token suffixes.

Prints time-to-first-token (mean over requests, from arrival) and total time with the radix cache on and
off, and the hit ratio, on SmolLM2-135M-Instruct. Requests arrive together; each generates 16 tokens.

    .venv/bin/python tests/performance/bench_prefix.py
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import print_table

from mili.worker import LLM, SamplingParams
from mili.worker.model_source import DEFAULT_MODEL, resolve_model_source


def run(
    model: str, prompts: list[list[int]], prefix_caching: bool, output_tokens: int
) -> tuple[float, float, float]:
    llm = LLM(
        model=model, prefix_caching=prefix_caching, cpu_kv_cache_bytes=2**30, max_num_batched_tokens=2048
    )
    llm.generate([prompts[0][:64]], SamplingParams(max_tokens=1))  # warm-up, unrelated tokens
    params = SamplingParams(temperature=0.0, max_tokens=output_tokens, ignore_eos=True)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params)
    total = time.perf_counter() - start
    ttft = sum(o.metrics.first_token_time - o.metrics.arrival_time for o in outputs) / len(outputs)
    stats = llm.engine.stats()
    warmup_tokens = 64
    hit_ratio = stats.prefix_hit_tokens / max(1, stats.prefix_queried_tokens - warmup_tokens)
    return ttft, total, hit_ratio


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--system-tokens", type=int, default=1024)
    parser.add_argument("--suffix-tokens", type=int, default=32)
    parser.add_argument("--output-tokens", type=int, default=16)
    args = parser.parse_args()
    vocab = json.loads((resolve_model_source(args.model) / "config.json").read_text())["vocab_size"]
    rng = random.Random(0)
    system = [rng.randrange(100, vocab) for _ in range(args.system_tokens)]
    prompts = [
        system + [rng.randrange(100, vocab) for _ in range(args.suffix_tokens)] for _ in range(args.requests)
    ]
    off = run(args.model, prompts, False, args.output_tokens)
    on = run(args.model, prompts, True, args.output_tokens)
    print_table(
        ["prefix cache", "mean TTFT s", "total s", "hit ratio"],
        [["off", off[0], off[1], off[2]], ["on", on[0], on[1], on[2]]],
    )
    print(f"TTFT speed-up {off[0] / on[0]:.1f}x, total speed-up {off[1] / on[1]:.1f}x")


if __name__ == "__main__":
    main()
