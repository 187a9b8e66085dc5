"""GPU verification of the CUDA kernels, driven by gpu_check.sh (see docs/kernels.md).

1. every kernel against `TorchBackend` on fresh random inputs, outputs poisoned with NaN first, over
   Qwen3-0.6B (16 q / 8 kv heads) and Qwen3-8B (32 / 8) head shapes, head_dim 128 (and 64), block sizes
   16 and 32, contexts 1..8k, batches 1..256;
2. the engine's greedy output with kernels="cuda" equal to kernels="torch" on a random tiny Qwen3;
3. a table: each kernel's time against its memory floor (bytes moved / measured copy bandwidth) and
   against the torch equivalent (SDPA for prefill).

``--dry-run`` runs the same harness on CPU with the torch reference standing in for the kernels and
small shapes: it checks this script, not the kernels.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from mili.kernels.torch_ops import TorchBackend

HEAD_SHAPES = {"qwen3-0.6b": (16, 8, 128), "qwen3-8b": (32, 8, 128)}
TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 5e-3, torch.float32: 1e-4}


@dataclass
class Report:
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    timings: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def check(self, name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:
            self.failed.append(f"{name}: {type(exc).__name__}: {exc}")
            print(f"FAIL {name}: {exc}", flush=True)
            traceback.print_exc(limit=3)
        else:
            self.passed.append(name)


@dataclass
class Env:
    device: torch.device
    candidate: object  # the backend under test
    reference: TorchBackend
    dry_run: bool
    quick: bool
    generator: torch.Generator


# -- inputs ------------------------------------------------------------------------------------


def randn(env: Env, *shape: int, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=env.generator, device=env.device) * scale).to(dtype)


def poison_allocator(env: Env, *shapes_dtypes: tuple[tuple[int, ...], torch.dtype]) -> None:
    """Fill and free blocks of the sizes the op will allocate, so its `torch.empty` outputs start as
    NaN: a kernel that leaves any element unwritten then fails the comparison."""
    held = [torch.full(shape, float("nan"), dtype=dtype, device=env.device) for shape, dtype in shapes_dtypes]
    del held


def compare(name: str, actual: torch.Tensor, expected: torch.Tensor) -> None:
    tol = TOLERANCE[expected.dtype]
    if torch.isnan(actual).any() and not torch.isnan(expected).any():
        raise AssertionError(f"{name}: {int(torch.isnan(actual).sum())} NaN elements (unwritten output?)")
    torch.testing.assert_close(actual.float(), expected.float(), atol=tol, rtol=tol, equal_nan=True, msg=None)


@dataclass
class PagedBatch:
    """A paged KV cache with random contents and a random block table per sequence."""

    k_cache: torch.Tensor
    v_cache: torch.Tensor
    block_tables: torch.Tensor
    context_lens: torch.Tensor


def paged_batch(
    env: Env, context_lens: list[int], kv_heads: int, head_dim: int, block_size: int, dtype
) -> PagedBatch:
    blocks_per_seq = [math.ceil(n / block_size) for n in context_lens]
    num_blocks = sum(blocks_per_seq) + 3
    shape = (num_blocks, block_size, kv_heads, head_dim)
    k_cache, v_cache = randn(env, *shape, dtype=dtype), randn(env, *shape, dtype=dtype)
    order = torch.randperm(num_blocks, generator=env.generator, device=env.device).to(torch.int32)
    width = max(blocks_per_seq)
    tables = torch.full((len(context_lens), width), -1, dtype=torch.int32, device=env.device)
    used = 0
    for i, n in enumerate(blocks_per_seq):
        tables[i, :n] = order[used : used + n]
        used += n
    lens = torch.tensor(context_lens, dtype=torch.int32, device=env.device)
    return PagedBatch(k_cache, v_cache, tables, lens)


# -- correctness -------------------------------------------------------------------------------


def check_elementwise(env: Env, report: Report, dtype: torch.dtype) -> None:
    tag = str(dtype).removeprefix("torch.")
    for tokens, hidden in [(1, 1024), (37, 4096), (256, 128 * 16)] if not env.dry_run else [(3, 64)]:

        def rms(tokens=tokens, hidden=hidden) -> None:
            x, r = randn(env, tokens, hidden, dtype=dtype), randn(env, tokens, hidden, dtype=dtype)
            w = randn(env, hidden, dtype=dtype, scale=0.5) + 1
            for residual in (None, r):
                poison_allocator(env, ((tokens, hidden), dtype), ((tokens, hidden), dtype))
                out, res = env.candidate.rms_norm(x, w, 1e-6, residual)
                ref_out, ref_res = env.reference.rms_norm(x, w, 1e-6, residual)
                compare("rms_norm", out, ref_out)
                if residual is not None:
                    compare("rms_norm residual", res, ref_res)

        report.check(f"rms_norm {tag} T={tokens} H={hidden}", rms)

    for tokens, inner in [(1, 3072), (100, 12288)] if not env.dry_run else [(3, 16)]:

        def silu(tokens=tokens, inner=inner) -> None:
            x = randn(env, tokens, 2 * inner, dtype=dtype, scale=2.0)
            poison_allocator(env, ((tokens, inner), dtype))
            compare("silu_and_mul", env.candidate.silu_and_mul(x), env.reference.silu_and_mul(x))

        report.check(f"silu_and_mul {tag} T={tokens} I={inner}", silu)

    for model, (hq, hk, d) in HEAD_SHAPES.items():
        tokens = 5 if env.dry_run else 300

        def rotary(hq=hq, hk=hk, d=d, tokens=tokens) -> None:
            max_pos = 8192
            inv_freq = 1.0 / (1e6 ** (torch.arange(0, d, 2, device=env.device).float() / d))
            freqs = torch.outer(torch.arange(max_pos, device=env.device).float(), inv_freq)
            cache = torch.cat((freqs.cos(), freqs.sin()), dim=-1)
            positions = torch.randint(0, max_pos, (tokens,), generator=env.generator, device=env.device)
            # q and k as views of a fused qkv projection, as the model passes them
            qkv = randn(env, tokens, (hq + 2 * hk) * d, dtype=dtype)
            q, k = qkv[:, : hq * d].view(tokens, hq, d), qkv[:, hq * d : (hq + hk) * d].view(tokens, hk, d)
            q_ref, k_ref = q.clone(), k.clone()
            env.candidate.rotary_embedding(positions, q, k, cache)
            env.reference.rotary_embedding(positions, q_ref, k_ref, cache)
            compare("rotary q", q, q_ref)
            compare("rotary k", k, k_ref)

        report.check(f"rotary_embedding {tag} {model}", rotary)

        def store(hk=hk, d=d) -> None:
            for block_size in (16, 32):
                num_blocks, tokens = 64, 100
                caches = [
                    torch.full((num_blocks, block_size, hk, d), float("nan"), dtype=dtype, device=env.device)
                ]
                caches.append(caches[0].clone())
                ref_caches = [c.clone() for c in caches]
                k, v = randn(env, tokens, hk, d, dtype=dtype), randn(env, tokens, hk, d, dtype=dtype)
                slots = torch.randperm(num_blocks * block_size, generator=env.generator, device=env.device)[
                    :tokens
                ]
                slots[::7] = -1
                env.candidate.store_kv(k, v, *caches, slots)
                env.reference.store_kv(k, v, *ref_caches, slots)
                compare("store_kv k_cache", caches[0], ref_caches[0])
                compare("store_kv v_cache", caches[1], ref_caches[1])

        report.check(f"store_kv {tag} {model}", store)


def decode_cases(env: Env) -> list[tuple[int, int]]:
    """(batch, max context) pairs: all batches and contexts covered, memory for the reference bounded."""
    if env.dry_run:
        return [(1, 1), (3, 40)]
    cases = [(1, 1), (1, 17), (3, 512), (7, 513), (1, 8192), (16, 8192), (64, 4096), (256, 1024), (256, 33)]
    return cases[:4] if env.quick else cases


def check_decode(env: Env, report: Report, dtype: torch.dtype) -> None:
    tag = str(dtype).removeprefix("torch.")
    for model, (hq, hk, d) in HEAD_SHAPES.items():
        for block_size in (16, 32):
            for batch, max_context in decode_cases(env):

                def run(
                    hq=hq, hk=hk, d=d, block_size=block_size, batch=batch, max_context=max_context
                ) -> None:
                    lens = torch.randint(1, max_context + 1, (batch,), generator=env.generator).tolist()
                    lens[0] = max_context  # the longest case is always present
                    paged = paged_batch(env, lens, hk, d, block_size, dtype)
                    q = randn(env, batch, hq, d, dtype=dtype)
                    splits = math.ceil(paged.block_tables.shape[1] * block_size / 512)
                    poison_allocator(env, ((batch, hq, d), dtype), ((batch, hq, splits, d), torch.float32))
                    args = (q, paged.k_cache, paged.v_cache, paged.block_tables, paged.context_lens, d**-0.5)
                    compare(
                        "decode", env.candidate.decode_attention(*args), env.reference.decode_attention(*args)
                    )

                report.check(f"decode {tag} {model} bs={block_size} B={batch} ctx<={max_context}", run)


def prefill_cases(env: Env) -> list[list[tuple[int, int]]]:
    """Batches of (new tokens, cached prefix) per sequence."""
    if env.dry_run:
        return [[(3, 0)], [(2, 5), (4, 0)]]
    cases = [
        [(1, 0)],
        [(65, 0)],
        [(8192, 0)],
        [(100, 4000)],  # a chunk after a long cached prefix
        [(1, 300), (64, 0), (129, 64), (7, 1000), (300, 17)],  # mixed varlen batch
        [(33, 5)] * 64,
        [(1, 50)] * 256,  # decode-like rows through the prefill kernel
        [(4096, 4096)],
    ]
    return cases[:5] if env.quick else cases


def check_prefill(env: Env, report: Report, dtype: torch.dtype) -> None:
    tag = str(dtype).removeprefix("torch.")
    for model, (hq, hk, d) in HEAD_SHAPES.items():
        for block_size in (16, 32):
            for seqs in prefill_cases(env):

                def run(hq=hq, hk=hk, d=d, block_size=block_size, seqs=seqs) -> None:
                    q_lens = [n for n, _ in seqs]
                    paged = paged_batch(env, [n + prefix for n, prefix in seqs], hk, d, block_size, dtype)
                    cu = torch.tensor(
                        [0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32, device=env.device
                    )
                    q = randn(env, sum(q_lens), hq, d, dtype=dtype)
                    poison_allocator(env, ((sum(q_lens), hq, d), dtype))
                    args = (
                        q,
                        paged.k_cache,
                        paged.v_cache,
                        cu,
                        paged.context_lens,
                        paged.block_tables,
                        d**-0.5,
                    )
                    compare(
                        "prefill",
                        env.candidate.prefill_attention(*args),
                        env.reference.prefill_attention(*args),
                    )

                summary = f"{len(seqs)} seqs, q<={max(n for n, _ in seqs)}, prefix<={max(p for _, p in seqs)}"
                report.check(f"prefill {tag} {model} bs={block_size} {summary}", run)


def check_head_dim_64(env: Env, report: Report) -> None:
    def run() -> None:
        dtype = torch.bfloat16
        paged = paged_batch(env, [70, 600], 2, 64, 16, dtype)
        q = randn(env, 2, 8, 64, dtype=dtype)
        args = (q, paged.k_cache, paged.v_cache, paged.block_tables, paged.context_lens, 0.125)
        compare("decode d64", env.candidate.decode_attention(*args), env.reference.decode_attention(*args))
        cu = torch.tensor([0, 20, 120], dtype=torch.int32, device=env.device)
        q = randn(env, 120, 8, 64, dtype=dtype)
        args = (q, paged.k_cache, paged.v_cache, cu, paged.context_lens, paged.block_tables, 0.125)
        compare("prefill d64", env.candidate.prefill_attention(*args), env.reference.prefill_attention(*args))

    report.check("decode+prefill head_dim 64 (GQA 4)", run)


# -- engine ------------------------------------------------------------------------------------


def make_tiny_qwen3(directory: Path) -> None:
    """A random Qwen3 (2 layers, head_dim 128, GQA 2) with a word-level tokenizer over w0..w1023."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=1024,
        hidden_size=512,
        intermediate_size=1024,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=128,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        initializer_range=0.25,  # peaky logits: greedy choices are not near-ties
        eos_token_id=1023,
        bos_token_id=1022,
    )
    Qwen3ForCausalLM(config).to(torch.bfloat16).save_pretrained(directory)
    vocab = {f"w{i}": i for i in range(1024)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="w1023", bos_token="w1022", unk_token="w0"
    )
    fast.save_pretrained(directory)


def greedy_token_ids(model_dir: Path, kernels: str, prompts: list[str], max_tokens: int) -> list[list[int]]:
    from mili.worker import LLM, SamplingParams

    llm = LLM(model=str(model_dir), kernels=kernels, dtype="bfloat16")
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    outputs = llm.generate(prompts, params)
    ids = [list(output.outputs[0].token_ids) for output in outputs]
    del llm
    torch.cuda.empty_cache()
    return ids


def check_engine(env: Env, report: Report) -> None:
    def run() -> None:
        generator = torch.Generator().manual_seed(1)
        prompts = [
            " ".join(f"w{int(t)}" for t in torch.randint(0, 1000, (n,), generator=generator))
            for n in (1, 5, 17, 64, 200, 3, 40, 129)
        ]
        with tempfile.TemporaryDirectory() as tmp:
            make_tiny_qwen3(Path(tmp))
            torch_ids = greedy_token_ids(Path(tmp), "torch", prompts, 48)
            cuda_ids = greedy_token_ids(Path(tmp), "cuda", prompts, 48)
        for i, (a, b) in enumerate(zip(torch_ids, cuda_ids, strict=True)):
            if a != b:
                first = next(j for j, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
                window = slice(first, first + 5)
                raise AssertionError(
                    f"prompt {i} diverges at token {first}: torch {a[window]} cuda {b[window]}"
                )

    if env.dry_run:
        report.notes.append("engine check skipped in dry run (needs a GPU)")
        return
    report.check("engine greedy cuda == torch (random tiny Qwen3, bf16)", run)


# -- timing ------------------------------------------------------------------------------------


def time_ms(env: Env, fn: Callable[[], object], iters: int = 20) -> float:
    """Median of per-launch times over a few batches of back-to-back launches, after warm-up."""
    for _ in range(3):
        fn()
    if env.dry_run:
        start = time.perf_counter()
        for _ in range(2):
            fn()
        return (time.perf_counter() - start) / 2 * 1e3
    samples = []
    for _ in range(5):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        samples.append(begin.elapsed_time(end) / iters)
    return statistics.median(samples)


def copy_bandwidth(env: Env) -> float:
    """Device copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    n = (1 << 30) if not env.dry_run else (1 << 22)
    src = torch.empty(n, dtype=torch.uint8, device=env.device)
    dst = torch.empty_like(src)
    ms = time_ms(env, lambda: dst.copy_(src))
    return 2 * n / (ms / 1e3)


def benchmark(env: Env, report: Report) -> None:
    dtype = torch.bfloat16
    bandwidth = copy_bandwidth(env)
    report.notes.append(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s (read + write)")
    hq, hk, d = HEAD_SHAPES["qwen3-8b"]
    small = env.dry_run
    cand, ref = env.candidate, env.reference

    def row(
        kernel: str, shape: str, bytes_moved: float, ours: Callable, theirs: Callable, theirs_name: str
    ) -> None:
        t_ours, t_ref = time_ms(env, ours), time_ms(env, theirs)
        floor_ms = bytes_moved / bandwidth * 1e3
        report.timings.append(
            {
                "kernel": kernel,
                "shape": shape,
                "ms": round(t_ours, 4),
                "floor_ms": round(floor_ms, 4),
                "of_bandwidth": round(floor_ms / t_ours, 3),
                "torch": theirs_name,
                "torch_ms": round(t_ref, 4),
                "speedup_vs_torch": round(t_ref / t_ours, 2),
            }
        )
        share, speedup = floor_ms / t_ours, t_ref / t_ours
        print(f"{kernel:18s} {shape:34s} {t_ours:8.3f} ms  {share:6.1%} of bw  {speedup:5.2f}x {theirs_name}")

    e = 2  # bytes per bf16 element
    tokens, hidden = (32768, 4096) if not small else (64, 256)
    x, r, w = (
        randn(env, tokens, hidden, dtype=dtype),
        randn(env, tokens, hidden, dtype=dtype),
        randn(env, hidden, dtype=dtype),
    )
    row(
        "rms_norm+residual",
        f"T={tokens} H={hidden}",
        4 * tokens * hidden * e,
        lambda: cand.rms_norm(x, w, 1e-6, r),
        lambda: ref.rms_norm(x, w, 1e-6, r),
        "torch ops",
    )
    tokens, inner = (16384, 12288) if not small else (64, 256)
    x = randn(env, tokens, 2 * inner, dtype=dtype)
    row(
        "silu_and_mul",
        f"T={tokens} I={inner}",
        3 * tokens * inner * e,
        lambda: cand.silu_and_mul(x),
        lambda: ref.silu_and_mul(x),
        "torch ops",
    )
    tokens = 65536 if not small else 64
    q, k = randn(env, tokens, hq, d, dtype=dtype), randn(env, tokens, hk, d, dtype=dtype)
    cache = torch.rand(8192, d, device=env.device)
    positions = torch.randint(0, 8192, (tokens,), device=env.device)
    row(
        "rotary_embedding",
        f"T={tokens} Hq={hq} Hk={hk}",
        2 * tokens * (hq + hk) * d * e + tokens * d * 4,
        lambda: cand.rotary_embedding(positions, q, k, cache),
        lambda: ref.rotary_embedding(positions, q, k, cache),
        "torch ops",
    )
    kc = torch.empty(tokens // 16 + 1, 16, hk, d, dtype=dtype, device=env.device)
    vc = torch.empty_like(kc)
    slots = torch.randperm(tokens, device=env.device)
    k2, v2 = randn(env, tokens, hk, d, dtype=dtype), randn(env, tokens, hk, d, dtype=dtype)
    row(
        "store_kv",
        f"T={tokens} Hk={hk}",
        4 * tokens * hk * d * e,
        lambda: cand.store_kv(k2, v2, kc, vc, slots),
        lambda: ref.store_kv(k2, v2, kc, vc, slots),
        "index_copy_",
    )

    for batch, context in [(64, 4096), (256, 1024), (1, 8192)] if not small else [(2, 64)]:
        paged = paged_batch(env, [context] * batch, hk, d, 16, dtype)
        qd = randn(env, batch, hq, d, dtype=dtype)
        args = (qd, paged.k_cache, paged.v_cache, paged.block_tables, paged.context_lens, d**-0.5)
        row(
            "decode_attention",
            f"B={batch} ctx={context} 8B heads",
            2 * batch * context * hk * d * e + 2 * qd.numel() * e,
            lambda args=args: cand.decode_attention(*args),
            lambda args=args: ref.decode_attention(*args),
            "gather+SDPA",
        )

    for batch, length in [(1, 4096), (4, 1024), (1, 8192)] if not small else [(1, 64)]:
        paged = paged_batch(env, [length] * batch, hk, d, 16, dtype)
        qp = randn(env, batch * length, hq, d, dtype=dtype)
        cu = torch.arange(0, batch + 1, dtype=torch.int32, device=env.device) * length
        args = (qp, paged.k_cache, paged.v_cache, cu, paged.context_lens, paged.block_tables, d**-0.5)
        # SDPA on contiguous (already gathered) K/V: the fast path our paged kernel is measured against
        qs = qp.view(batch, length, hq, d).transpose(1, 2)
        ks = randn(env, batch, hk, length, d, dtype=dtype)
        vs = randn(env, batch, hk, length, d, dtype=dtype)
        bytes_moved = 2 * qp.numel() * e + 2 * batch * length * hk * d * e
        row(
            "prefill_attention",
            f"B={batch} T={length} causal 8B heads",
            bytes_moved,
            lambda args=args: cand.prefill_attention(*args),
            lambda qs=qs, ks=ks, vs=vs: F.scaled_dot_product_attention(
                qs, ks, vs, is_causal=True, enable_gqa=True
            ),
            "SDPA",
        )


def format_table(report: Report) -> str:
    lines = [
        "| kernel | shape | ms | floor ms | of copy bw | torch equivalent | torch ms | vs torch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in report.timings:
        lines.append(
            f"| {t['kernel']} | {t['shape']} | {t['ms']:.3f} | {t['floor_ms']:.3f} | "
            f"{t['of_bandwidth']:.0%} | {t['torch']} | {t['torch_ms']:.3f} | {t['speedup_vs_torch']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, torch reference as the candidate")
    parser.add_argument("--quick", action="store_true", help="fewer cases")
    parser.add_argument("--out", type=Path, default=Path(".gpu-check-out"))
    parser.add_argument("--skip-engine", action="store_true")
    parser.add_argument("--skip-bench", action="store_true")
    args = parser.parse_args(argv)
    started = time.monotonic()

    if args.dry_run:
        device, candidate = torch.device("cpu"), TorchBackend()
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: run with --dry-run to check the script on CPU", file=sys.stderr)
            return 2
        from mili.kernels.cuda_backend import CudaBackend

        device = torch.device("cuda", 0)
        candidate = CudaBackend(device)
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}", flush=True)
    env = Env(
        device,
        candidate,
        TorchBackend(),
        args.dry_run,
        args.quick,
        torch.Generator(device=device).manual_seed(0),
    )
    report = Report()

    print("== correctness", flush=True)
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        check_elementwise(env, report, dtype)
    check_decode(env, report, torch.bfloat16)
    check_prefill(env, report, torch.bfloat16)
    if not args.quick:
        check_decode(env, report, torch.float16)
        check_prefill(env, report, torch.float16)
    check_head_dim_64(env, report)
    elapsed = time.monotonic() - started
    print(f"correctness: {len(report.passed)} passed, {len(report.failed)} failed ({elapsed:.0f} s)")

    if not args.skip_engine:
        print("== engine", flush=True)
        check_engine(env, report)
    if not args.skip_bench:
        print("== timing (bf16)", flush=True)
        report.check("benchmark", lambda: benchmark(env, report))

    table = format_table(report)
    print(table)
    for note in report.notes:
        print(f"note: {note}")
    elapsed = time.monotonic() - started
    print(f"total: {len(report.passed)} passed, {len(report.failed)} failed in {elapsed:.0f} s")
    for failure in report.failed:
        print(f"FAILED {failure}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report.__dict__, indent=1))
    (args.out / "gpu_check_table.md").write_text(table + "\n")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
