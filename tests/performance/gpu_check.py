"""GPU verification of the CUDA kernels and the GPU engine path, driven by gpu_check.sh (docs/kernels.md).

1. kernels: every op against a float32 reference computed by the torch ops from the same rounded
   inputs (atol/rtol and a per-row relative norm), over Qwen3-0.6B and -8B head shapes, every decode
   GQA variant (ratios 1, 2, 4, 8) and fp32 decode, flat and peaky attention (q scaled up), rms_norm
   on the 3-D per-head shape, block sizes 16 and 32; inputs unchanged afterwards; outputs allocated
   in NaN-poisoned memory, and proven to be (the op wrote where the poison was);
2. ``--sanitizer-smoke``: one small case of each kernel (the start-up self-check's), which
   gpu_check.sh runs under ``compute-sanitizer --tool memcheck``;
3. the engine: greedy output with kernels=cuda equal to kernels=torch, CUDA graphs equal to eager;
4. a table: each kernel against its memory floor and against torch (SDPA for prefill), per-launch
   overhead, the start-up self-check's time, and engine decode tokens/s at batch 1, 16, 64, 256 for
   Qwen3-0.6B- and 8B-shaped random models, eager and graphs, against transformers ``generate``.

``--dry-run`` runs every one of these code paths on CPU, small: the candidate is the torch reference
behind the CUDA launchers' argument checks (`CheckedTorchBackend`), and every random draw goes through
the same device-bound helpers as on the GPU. It checks this script, not the kernels.
"""

from __future__ import annotations

import argparse
import gc
import json
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

from mili.kernels.self_check import KernelShapes, compare, run_self_check
from mili.kernels.torch_ops import TorchBackend

HEAD_SHAPES = {"qwen3-0.6b": (16, 8, 128), "qwen3-8b": (32, 8, 128)}
GQA_VARIANTS = {"gqa1": (8, 8, 128), "gqa2": (16, 8, 128), "gqa4": (32, 8, 128), "gqa8": (64, 8, 128)}
Q_SCALES = {"flat": 1.0, "peaky": 8.0}  # peaky: q scaled up, softmax dominated by a few keys
ENGINE_BATCHES = (1, 16, 64, 256)
# Targets of issue 13 (reported, not enforced: a miss is a finding, not a broken check).
TARGETS = {"decode_attention": 0.85, "elementwise": 0.80, "prefill_vs_sdpa": 0.70, "engine_vs_hf": 3.0}


@dataclass
class Report:
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    timings: list[dict] = field(default_factory=list)
    engine: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    launches: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    deadline: float | None = None  # time.time() after which checks are skipped, not started

    def out_of_time(self, needs_s: float = 0.0) -> bool:
        """Past the deadline, or too close to it for a step that needs ``needs_s`` seconds."""
        return self.deadline is not None and time.time() + needs_s > self.deadline

    def check(self, name: str, fn: Callable[[], None]) -> None:
        if self.out_of_time():
            self.skipped.append(name)
            print(f"SKIP {name}: past the time budget", flush=True)
            return
        try:
            fn()
        except Exception as exc:
            self.failed.append(f"{name}: {type(exc).__name__}: {exc}")
            print(f"FAIL {name}: {exc}", flush=True)
            traceback.print_exc(limit=4)
        else:
            self.passed.append(name)


@dataclass
class Env:
    device: torch.device
    candidate: object  # the backend under test
    reference: TorchBackend
    dry_run: bool
    quick: bool
    generator: torch.Generator  # on `device`: every draw goes through the helpers below

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"


# -- inputs: the only places that draw random numbers ---------------------------------------------


def randn(env: Env, *shape: int, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=env.generator, device=env.device) * scale).to(dtype)


def randint(env: Env, low: int, high: int, n: int) -> torch.Tensor:
    return torch.randint(low, high, (n,), generator=env.generator, device=env.device)


def randperm(env: Env, n: int) -> torch.Tensor:
    return torch.randperm(n, generator=env.generator, device=env.device)


@dataclass
class PagedBatch:
    """A paged KV cache with random contents and a shuffled block table per sequence."""

    k_cache: torch.Tensor
    v_cache: torch.Tensor
    block_tables: torch.Tensor
    context_lens: torch.Tensor


def paged_batch(env: Env, context_lens: list[int], kv_heads: int, head_dim: int, block_size: int, dtype):
    blocks_per_seq = [-(-n // block_size) for n in context_lens]
    num_blocks = sum(blocks_per_seq) + 3
    shape = (num_blocks, block_size, kv_heads, head_dim)
    k_cache, v_cache = randn(env, *shape, dtype=dtype), randn(env, *shape, dtype=dtype)
    order = randperm(env, num_blocks).to(torch.int32)
    tables = torch.full((len(context_lens), max(blocks_per_seq)), -1, dtype=torch.int32, device=env.device)
    used = 0
    for i, n in enumerate(blocks_per_seq):
        tables[i, :n] = order[used : used + n]
        used += n
    lens = torch.tensor(context_lens, dtype=torch.int32, device=env.device)
    return PagedBatch(k_cache, v_cache, tables, lens)


def as_float32(args: tuple) -> tuple:
    """The same (already rounded) inputs, upcast: the reference computes in float32 from them."""
    return tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


# -- poisoned outputs, unchanged inputs ----------------------------------------------------------


def poison(env: Env, *specs: tuple[tuple[int, ...], torch.dtype]) -> list[tuple[int, int]]:
    """Fill and free blocks of the sizes the op will allocate, so its `torch.empty` outputs start as
    NaN; returns their address ranges, to prove afterwards that the outputs landed there."""
    held = [torch.full(shape, float("nan"), dtype=dtype, device=env.device) for shape, dtype in specs]
    ranges = [(t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()) for t in held]
    del held
    return ranges


def assert_poisoned(env: Env, name: str, outputs: list[torch.Tensor], ranges: list[tuple[int, int]]) -> None:
    """Each output lies inside poisoned memory, so the NaN check covers every element of it. Enforced
    on the GPU (torch's caching allocator hands freed blocks back); CPU malloc makes no such promise."""
    for out in outputs:
        begin = out.data_ptr()
        end = begin + out.numel() * out.element_size()
        if not any(low <= begin and end <= high for low, high in ranges) and env.on_gpu:
            raise AssertionError(f"{name}: output at {begin:#x} is outside the poisoned blocks")


def snapshot(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.clone() for t in tensors]


def assert_unchanged(name: str, before: list[torch.Tensor], after: tuple[torch.Tensor, ...]) -> None:
    for i, (old, new) in enumerate(zip(before, after, strict=True)):
        if not torch.equal(old, new):
            raise AssertionError(f"{name}: input {i} changed")


def check_against_fp32(name: str, actual: torch.Tensor, expected32: torch.Tensor) -> None:
    """The candidate's output against the float32 reference, with its own dtype's tolerances."""
    compare(name, actual, expected32)


# -- correctness -------------------------------------------------------------------------------


def check_elementwise(env: Env, report: Report, dtype: torch.dtype) -> None:
    tag = str(dtype).removeprefix("torch.")
    sizes = [(1, 1024), (37, 4096), (256, 2048)] if not env.dry_run else [(3, 64)]
    for tokens, hidden in sizes:

        def rms(tokens=tokens, hidden=hidden) -> None:
            x, r = randn(env, tokens, hidden, dtype=dtype), randn(env, tokens, hidden, dtype=dtype)
            w = randn(env, hidden, dtype=dtype, scale=0.5) + 1
            for residual in (None, r):
                inputs = (x, w) if residual is None else (x, w, residual)
                before = snapshot(*inputs)
                ranges = poison(env, ((tokens, hidden), dtype), ((tokens, hidden), dtype))
                out, res = env.candidate.rms_norm(x, w, 1e-6, residual)
                assert_poisoned(env, "rms_norm", [out] + ([res] if res is not None else []), ranges)
                assert_unchanged("rms_norm", before, inputs)
                ref_out, ref_res = env.reference.rms_norm(*as_float32((x, w, 1e-6, residual)))
                check_against_fp32("rms_norm", out, ref_out)
                if residual is not None:
                    check_against_fp32("rms_norm residual", res, ref_res)

        report.check(f"rms_norm {tag} T={tokens} H={hidden}", rms)
        report.check(
            f"fused_add_rms_norm {tag} T={tokens} H={hidden}",
            lambda tokens=tokens, hidden=hidden: fused_add_rms_norm(env, dtype, tokens, hidden),
        )

    def rms_per_head() -> None:
        tokens, heads, d = (300, 32, 128) if not env.dry_run else (5, 4, 64)
        x = randn(env, tokens, heads, d, dtype=dtype)
        w = randn(env, d, dtype=dtype, scale=0.5) + 1
        before = snapshot(x, w)
        ranges = poison(env, ((tokens, heads, d), dtype))
        out, _ = env.candidate.rms_norm(x, w, 1e-6)
        assert_poisoned(env, "rms_norm 3-D", [out], ranges)
        assert_unchanged("rms_norm 3-D", before, (x, w))
        check_against_fp32("rms_norm 3-D", out, env.reference.rms_norm(*as_float32((x, w, 1e-6)))[0])

    report.check(f"rms_norm {tag} per-head 3-D", rms_per_head)

    for tokens, inner in [(1, 3072), (100, 12288)] if not env.dry_run else [(3, 16)]:

        def silu(tokens=tokens, inner=inner) -> None:
            x = randn(env, tokens, 2 * inner, dtype=dtype, scale=2.0)
            before = snapshot(x)
            ranges = poison(env, ((tokens, inner), dtype))
            out = env.candidate.silu_and_mul(x)
            assert_poisoned(env, "silu_and_mul", [out], ranges)
            assert_unchanged("silu_and_mul", before, (x,))
            check_against_fp32("silu_and_mul", out, env.reference.silu_and_mul(x.float()))

        report.check(f"silu_and_mul {tag} T={tokens} I={inner}", silu)

    for model, (hq, hk, d) in HEAD_SHAPES.items():
        report.check(
            f"rotary_embedding {tag} {model}", lambda hq=hq, hk=hk, d=d: rotary(env, dtype, hq, hk, d)
        )
        report.check(f"store_kv {tag} {model}", lambda hk=hk, d=d: store(env, dtype, hk, d))
        for qk_norm in (True, False):
            report.check(
                f"qk_norm_rotary {tag} {model} {'qwen3 norm' if qk_norm else 'no norm'}",
                lambda hq=hq, hk=hk, d=d, qk_norm=qk_norm: qk_norm_rotary(env, dtype, hq, hk, d, qk_norm),
            )


def rope_cache(env: Env, head_dim: int, max_positions: int = 8192) -> torch.Tensor:
    inv_freq = 1.0 / (1e6 ** (torch.arange(0, head_dim, 2, device=env.device).float() / head_dim))
    freqs = torch.outer(torch.arange(max_positions, device=env.device).float(), inv_freq)
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1)


def rotary(env: Env, dtype: torch.dtype, hq: int, hk: int, d: int) -> None:
    tokens = 5 if env.dry_run else 300
    cache = rope_cache(env, d)
    positions = randint(env, 0, cache.shape[0], tokens)
    # q and k as strided views of a fused qkv projection (the op accepts them; the model passes dense)
    qkv = randn(env, tokens, (hq + 2 * hk) * d, dtype=dtype)
    q, k = qkv[:, : hq * d].view(tokens, hq, d), qkv[:, hq * d : (hq + hk) * d].view(tokens, hk, d)
    q32, k32 = q.float(), k.float()
    before = snapshot(positions, cache, qkv[:, (hq + hk) * d :])
    env.candidate.rotary_embedding(positions, q, k, cache)
    env.reference.rotary_embedding(positions, q32, k32, cache)
    assert_unchanged("rotary (positions, cache, v)", before, (positions, cache, qkv[:, (hq + hk) * d :]))
    check_against_fp32("rotary q", q, q32)
    check_against_fp32("rotary k", k, k32)


def fused_add_rms_norm(env: Env, dtype: torch.dtype, tokens: int, hidden: int) -> None:
    """In place: the residual must end as x + residual, the output is fresh (poisoned) memory."""
    x, residual = randn(env, tokens, hidden, dtype=dtype), randn(env, tokens, hidden, dtype=dtype)
    w = randn(env, hidden, dtype=dtype, scale=0.5) + 1
    before = snapshot(x, w)
    residual32 = residual.to(torch.float32, copy=True)  # a copy even when residual is float32
    ranges = poison(env, ((tokens, hidden), dtype))
    out = env.candidate.fused_add_rms_norm(x, residual, w, 1e-6)
    assert_poisoned(env, "fused_add_rms_norm", [out], ranges)
    assert_unchanged("fused_add_rms_norm (x, weight)", before, (x, w))
    expected32 = env.reference.fused_add_rms_norm(x.float(), residual32, w.float(), 1e-6)
    check_against_fp32("fused_add_rms_norm", out, expected32)
    check_against_fp32("fused_add_rms_norm residual", residual, residual32)


def qk_norm_rotary(env: Env, dtype: torch.dtype, hq: int, hk: int, d: int, qk_norm: bool) -> None:
    """On the strided q/k views of a fused qkv, as the model calls it; qkv itself stays unchanged."""
    tokens = 5 if env.dry_run else 300
    cache = rope_cache(env, d)
    positions = randint(env, 0, cache.shape[0], tokens)
    qkv = randn(env, tokens, (hq + 2 * hk) * d, dtype=dtype)
    q, k = qkv[:, : hq * d].view(tokens, hq, d), qkv[:, hq * d : (hq + hk) * d].view(tokens, hk, d)
    weights = (None, None)
    if qk_norm:
        weights = (randn(env, d, dtype=dtype, scale=0.5) + 1, randn(env, d, dtype=dtype, scale=0.5) + 1)
    inputs = (qkv, positions, cache, *[w for w in weights if w is not None])
    before = snapshot(*inputs)
    ranges = poison(env, ((tokens, hq, d), dtype), ((tokens, hk, d), dtype))
    q_out, k_out = env.candidate.qk_norm_rotary(positions, q, k, *weights, 1e-6, cache)
    assert_poisoned(env, "qk_norm_rotary", [q_out, k_out], ranges)
    assert_unchanged("qk_norm_rotary (qkv, positions, cache, weights)", before, inputs)
    q32, k32 = env.reference.qk_norm_rotary(positions, *as_float32((q, k, *weights)), 1e-6, cache)
    check_against_fp32("qk_norm_rotary q", q_out, q32)
    check_against_fp32("qk_norm_rotary k", k_out, k32)


def store(env: Env, dtype: torch.dtype, hk: int, d: int) -> None:
    for block_size in (16, 32):
        num_blocks, tokens = 64, 100
        caches = [torch.full((num_blocks, block_size, hk, d), float("nan"), dtype=dtype, device=env.device)]
        caches.append(caches[0].clone())
        ref_caches = [c.clone() for c in caches]
        k, v = randn(env, tokens, hk, d, dtype=dtype), randn(env, tokens, hk, d, dtype=dtype)
        slots = randperm(env, num_blocks * block_size)[:tokens]
        slots[::7] = -1
        before = snapshot(k, v, slots)
        env.candidate.store_kv(k, v, *caches, slots)
        env.reference.store_kv(k, v, *ref_caches, slots)
        assert_unchanged("store_kv", before, (k, v, slots))
        for name, ours, theirs in (
            ("k_cache", caches[0], ref_caches[0]),
            ("v_cache", caches[1], ref_caches[1]),
        ):
            if not torch.equal(ours.isnan(), theirs.isnan()) or not torch.equal(
                ours.nan_to_num(), theirs.nan_to_num()
            ):
                raise AssertionError(f"store_kv {name}: not an exact copy (or wrote a skipped slot)")


def decode_cases(env: Env) -> list[tuple[int, int]]:
    """(batch, max context) pairs: all batches and contexts covered, memory for the reference bounded."""
    if env.dry_run:
        return [(1, 1), (3, 40)]
    cases = [(1, 1), (1, 17), (3, 512), (7, 513), (1, 8192), (16, 8192), (64, 4096), (256, 1024), (256, 33)]
    return cases[:4] if env.quick else cases


def decode_once(
    env: Env, dtype, hq: int, hk: int, d: int, block_size: int, batch: int, max_context: int, q_scale: float
) -> None:
    lens = randint(env, 1, max_context + 1, batch).tolist()
    lens[0] = max_context  # the longest case is always present
    paged = paged_batch(env, lens, hk, d, block_size, dtype)
    q = randn(env, batch, hq, d, dtype=dtype, scale=q_scale)
    args = (q, paged.k_cache, paged.v_cache, paged.block_tables, paged.context_lens, d**-0.5)
    before = snapshot(*args[:5])
    splits = -(-paged.block_tables.shape[1] * block_size // 512)
    ranges = poison(env, ((batch, hq, d), dtype), ((batch, hq, splits, d), torch.float32))
    out = env.candidate.decode_attention(*args)
    assert_poisoned(env, "decode", [out], ranges)
    assert_unchanged("decode", before, args[:5])
    check_against_fp32("decode", out, env.reference.decode_attention(*as_float32(args)))


def check_decode(env: Env, report: Report, dtype: torch.dtype, head_shapes: dict) -> None:
    tag = str(dtype).removeprefix("torch.")
    for model, (hq, hk, d) in head_shapes.items():
        for block_size in (16, 32):
            for batch, max_context in decode_cases(env):
                for q_name, q_scale in Q_SCALES.items():
                    report.check(
                        f"decode {tag} {model} bs={block_size} B={batch} ctx<={max_context} {q_name}",
                        lambda a=(hq, hk, d, block_size, batch, max_context, q_scale): decode_once(
                            env, dtype, *a
                        ),
                    )


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


def prefill_once(env: Env, dtype, hq: int, hk: int, d: int, block_size: int, seqs, q_scale: float) -> None:
    q_lens = [n for n, _ in seqs]
    paged = paged_batch(env, [n + prefix for n, prefix in seqs], hk, d, block_size, dtype)
    cu = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32, device=env.device)
    q = randn(env, sum(q_lens), hq, d, dtype=dtype, scale=q_scale)
    args = (q, paged.k_cache, paged.v_cache, cu, paged.context_lens, paged.block_tables, d**-0.5)
    before = snapshot(*args[:6])
    ranges = poison(env, ((sum(q_lens), hq, d), dtype))
    out = env.candidate.prefill_attention(*args)
    assert_poisoned(env, "prefill", [out], ranges)
    assert_unchanged("prefill", before, args[:6])
    check_against_fp32("prefill", out, env.reference.prefill_attention(*as_float32(args)))


def check_prefill(env: Env, report: Report, dtype: torch.dtype) -> None:
    tag = str(dtype).removeprefix("torch.")
    for model, (hq, hk, d) in HEAD_SHAPES.items():
        for block_size in (16, 32):
            for seqs in prefill_cases(env):
                for q_name, q_scale in Q_SCALES.items():
                    summary = (
                        f"{len(seqs)} seqs, q<={max(n for n, _ in seqs)}, prefix<={max(p for _, p in seqs)}"
                    )
                    report.check(
                        f"prefill {tag} {model} bs={block_size} {summary} {q_name}",
                        lambda a=(hq, hk, d, block_size, seqs, q_scale): prefill_once(env, dtype, *a),
                    )


def check_head_dim_64(env: Env, report: Report) -> None:
    def run() -> None:
        decode_once(env, torch.bfloat16, 8, 2, 64, 16, 2, 600, 1.0)
        prefill_once(env, torch.bfloat16, 8, 2, 64, 16, [(20, 50), (100, 0)], 1.0)

    report.check("decode+prefill head_dim 64 (GQA 4)", run)


def check_self_check(env: Env, report: Report, shapes: dict[str, KernelShapes]) -> None:
    """The start-up self-check passes on these kernels, and its time (budget: 2 s)."""
    for name, kernel_shapes in shapes.items():

        def run(name=name, kernel_shapes=kernel_shapes) -> None:
            run_self_check(env.candidate, kernel_shapes, env.device)  # first: loads modules
            seconds = run_self_check(env.candidate, kernel_shapes, env.device, seed=1)
            report.notes.append(f"start-up self-check {name}: {seconds:.3f} s (budget 2 s)")
            if seconds > 2.0 and env.on_gpu:
                raise AssertionError(f"self-check took {seconds:.2f} s, over its 2 s budget")

        report.check(f"start-up self-check {name}", run)


def model_kernel_shapes(dry_run: bool) -> dict[str, KernelShapes]:
    if dry_run:
        return {"tiny": KernelShapes(256, 512, 4, 2, 64, 16, torch.bfloat16, qk_norm=True)}
    return {
        "qwen3-0.6b": KernelShapes(1024, 3072, 16, 8, 128, 16, torch.bfloat16, qk_norm=True),
        "qwen3-8b": KernelShapes(4096, 12288, 32, 8, 128, 16, torch.bfloat16, qk_norm=True),
    }


def sanitizer_smoke(env: Env) -> int:
    """One small case of each kernel for compute-sanitizer: the self-check's in bf16 and fp16, and the
    float32 variants (no prefill kernel in float32)."""
    for dtype in (torch.bfloat16, torch.float16):
        run_self_check(env.candidate, KernelShapes(256, 512, 8, 2, 128, 16, dtype, qk_norm=True), env.device)
    decode_once(env, torch.float32, 8, 2, 128, 16, 3, 600, 1.0)
    x, w = randn(env, 5, 256, dtype=torch.float32), randn(env, 256, dtype=torch.float32)
    env.candidate.rms_norm(x, w, 1e-6, x.clone())
    env.candidate.silu_and_mul(randn(env, 5, 512, dtype=torch.float32))
    rotary(env, torch.float32, 8, 2, 128)
    fused_add_rms_norm(env, torch.float32, 5, 256)
    qk_norm_rotary(env, torch.float32, 8, 2, 128, qk_norm=True)
    qk_norm_rotary(env, torch.float32, 8, 2, 64, qk_norm=False)
    store(env, torch.float32, 2, 128)
    if env.on_gpu:
        torch.cuda.synchronize(env.device)
    print("sanitizer smoke: every kernel ran", flush=True)
    return 0


# -- engine ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tie: bool


def engine_models(env: Env, layers_8b: int) -> list[ModelShape]:
    if env.dry_run:
        return [ModelShape("tiny-qwen3", 128, 256, 2, 4, 2, 1024, True)]
    return [
        ModelShape("qwen3-0.6b-shaped", 1024, 3072, 28, 16, 8, 151936, True),
        ModelShape(
            f"qwen3-8b-shaped ({layers_8b} of 36 layers)", 4096, 12288, layers_8b, 32, 8, 151936, False
        ),
    ]


def make_random_qwen3(
    directory: Path, shape: ModelShape, device: torch.device, max_positions: int = 4096
) -> None:
    """A random Qwen3 of ``shape`` (bf16, head_dim 128) and a word-level tokenizer over its vocab."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=128,
        max_position_embeddings=max_positions,
        tie_word_embeddings=shape.tie,
        rope_theta=1e6,
        initializer_range=0.25 if shape.hidden <= 1024 else 0.05,  # peaky logits: no near-ties in greedy
        eos_token_id=shape.vocab - 1,
        bos_token_id=shape.vocab - 2,
    )
    with torch.device(device):
        model = Qwen3ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(directory)
    del model
    vocab = {f"w{i}": i for i in range(shape.vocab)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=f"w{shape.vocab - 1}",
        bos_token=f"w{shape.vocab - 2}",
        unk_token="w0",
    )
    fast.save_pretrained(directory)


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def random_prompts(env: Env, count: int, length: int, vocab: int) -> list[list[int]]:
    return [randint(env, 0, vocab - 2, length).tolist() for _ in range(count)]


def engine_greedy(model_dir: Path, kernels: str, eager: bool, prompts, max_tokens: int, device: str):
    from mili.worker import LLM, SamplingParams

    llm = LLM(
        model=str(model_dir),
        kernels=kernels,
        dtype="bfloat16",
        device=device,
        enforce_eager=eager,
        gpu_memory_utilization=0.5,
    )
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    ids = [list(output.outputs[0].token_ids) for output in llm.generate(prompts, params)]
    del llm
    release_memory()
    return ids


def first_difference(name: str, expected: list[list[int]], actual: list[list[int]]) -> None:
    for i, (a, b) in enumerate(zip(expected, actual, strict=True)):
        if a != b:
            j = next(j for j, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
            raise AssertionError(
                f"{name}: prompt {i} diverges at token {j}: {a[j : j + 5]} vs {b[j : j + 5]}"
            )


def check_engine(env: Env, report: Report) -> None:
    """Greedy tokens: cuda (eager) == torch, cuda with graphs == cuda eager (random Qwen3s, bf16)."""
    kernels = "torch" if env.dry_run else "cuda"
    device = env.device.type
    shapes = [ModelShape("tiny-qwen3-d128", 512, 1024, 2, 4, 2, 1024, True)]
    if not env.quick and not env.dry_run:
        shapes.append(ModelShape("qwen3-8-heads", 1024, 2048, 4, 16, 8, 4096, True))
    for shape in shapes:

        def run(shape=shape) -> None:
            lengths = (1, 5, 17, 64, 200, 3, 40, 129, 16, 33)
            prompts = [randint(env, 0, shape.vocab - 2, n).tolist() for n in lengths]
            with tempfile.TemporaryDirectory() as tmp:
                make_random_qwen3(Path(tmp), shape, env.device)
                torch_ids = engine_greedy(Path(tmp), "torch", True, prompts, 48, device)
                eager_ids = engine_greedy(Path(tmp), kernels, True, prompts, 48, device)
                graph_ids = engine_greedy(Path(tmp), kernels, False, prompts, 48, device)
            first_difference(f"{kernels} vs torch", torch_ids, eager_ids)
            first_difference("graphs vs eager", eager_ids, graph_ids)

        report.check(f"engine greedy: {kernels} == torch, graphs == eager ({shape.name})", run)


def decode_tokens_per_second(generate: Callable[[int], None], batch: int, steps: int) -> float:
    """Decode throughput: (B × steps) tokens over t(steps + 1) - t(1), so prefill cancels out."""
    generate(2)  # warm-up
    started = time.perf_counter()
    generate(1)
    prefill = time.perf_counter() - started
    started = time.perf_counter()
    generate(steps + 1)
    total = time.perf_counter() - started
    return batch * steps / max(total - prefill, 1e-9)


def engine_benchmark(env: Env, report: Report, layers_8b: int) -> None:
    """Engine decode tokens/s, eager and graphs, against transformers generate on the same model."""
    from mili.worker import LLM, SamplingParams

    kernels = "torch" if env.dry_run else "cuda"
    batches = ENGINE_BATCHES if not env.dry_run else (1, 4)
    prompt_len, steps = (128, 32) if not env.dry_run else (8, 4)
    for shape in engine_models(env, layers_8b):
        # a guess at what one model's runs take on an H200 (build, three loads, captures, 4 batches)
        if report.out_of_time(needs_s=0 if env.dry_run else 60 + shape.layers * 3):
            report.skipped.append(f"engine benchmark {shape.name}")
            print(f"SKIP engine benchmark {shape.name}: past the time budget", flush=True)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = Path(tmp)
            make_random_qwen3(model_dir, shape, env.device)
            rows = {batch: {"model": shape.name, "batch": batch} for batch in batches}
            for mode, eager in (("eager", True), ("graphs", False)):
                llm = LLM(
                    model=str(model_dir),
                    kernels=kernels,
                    dtype="bfloat16",
                    device=env.device.type,
                    enforce_eager=eager,
                    max_num_seqs=max(batches),
                    gpu_memory_utilization=0.6,
                )
                for batch in batches:
                    prompts = random_prompts(env, batch, prompt_len, shape.vocab)

                    def generate(n: int, llm=llm, prompts=prompts) -> None:
                        llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True))

                    rows[batch][mode] = decode_tokens_per_second(generate, batch, steps)
                del llm
                release_memory()
            hf_tokens_per_second(env, model_dir, shape, batches, prompt_len, steps, rows)
        for row in rows.values():
            row["graphs_vs_hf"] = row["graphs"] / row["hf"]
            report.engine.append(row)
            print(
                f"engine {row['model']:40s} B={row['batch']:<4d} eager {row['eager']:9.1f} tok/s  "
                f"graphs {row['graphs']:9.1f}  transformers {row['hf']:9.1f}  ({row['graphs_vs_hf']:.2f}x)",
                flush=True,
            )


def hf_tokens_per_second(
    env: Env, model_dir: Path, shape: ModelShape, batches, prompt_len: int, steps: int, rows: dict
) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to(env.device).eval()
    for batch in batches:
        input_ids = torch.stack([randint(env, 0, shape.vocab - 2, prompt_len) for _ in range(batch)])
        mask = torch.ones_like(input_ids)

        def generate(n: int, model=model, input_ids=input_ids, mask=mask) -> None:
            with torch.inference_mode():
                model.generate(
                    input_ids=input_ids,
                    attention_mask=mask,
                    max_new_tokens=n,
                    min_new_tokens=n,
                    do_sample=False,
                    pad_token_id=0,
                )
            if env.on_gpu:
                torch.cuda.synchronize(env.device)

        rows[batch]["hf"] = decode_tokens_per_second(generate, batch, steps)
        del generate
    del model
    release_memory()


# -- timing ------------------------------------------------------------------------------------


def time_ms(env: Env, fn: Callable[[], object], iters: int = 20) -> float:
    """Median of per-launch times over a few batches of back-to-back launches, after warm-up."""
    for _ in range(3):
        fn()
    if not env.on_gpu:
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


def host_us_per_call(env: Env, fn: Callable[[], object], calls: int = 2000) -> float:
    """Wall time per call of back-to-back tiny launches: the host-side cost of one launch."""
    calls = calls if not env.dry_run else 50
    for _ in range(10):
        fn()
    if env.on_gpu:
        torch.cuda.synchronize(env.device)
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    if env.on_gpu:
        torch.cuda.synchronize(env.device)
    return (time.perf_counter() - started) / calls * 1e6


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
        kernel: str,
        shape: str,
        bytes_moved: float,
        ours: Callable,
        theirs: Callable,
        theirs_name: str,
        target: tuple[str, float] | None = None,
    ) -> None:
        t_ours, t_ref = time_ms(env, ours), time_ms(env, theirs)
        floor_ms = bytes_moved / bandwidth * 1e3
        entry = {
            "kernel": kernel,
            "shape": shape,
            "ms": round(t_ours, 4),
            "floor_ms": round(floor_ms, 4),
            "of_bandwidth": round(floor_ms / t_ours, 3),
            "torch": theirs_name,
            "torch_ms": round(t_ref, 4),
            "speedup_vs_torch": round(t_ref / t_ours, 2),
        }
        if target is not None:
            measure, goal = target
            value = entry["of_bandwidth"] if measure == "bandwidth" else entry["speedup_vs_torch"]
            entry["target"] = f"{measure} >= {goal:g}: {'met' if value >= goal else 'MISSED'}"
        report.timings.append(entry)
        print(
            f"{kernel:18s} {shape:34s} {t_ours:8.3f} ms  {floor_ms / t_ours:6.1%} of bw  "
            f"{t_ref / t_ours:5.2f}x {theirs_name}  {entry.get('target', '')}",
            flush=True,
        )

    e = 2  # bytes per bf16 element
    elementwise = ("bandwidth", TARGETS["elementwise"])
    tokens, hidden = (32768, 4096) if not small else (64, 256)
    x, r = randn(env, tokens, hidden, dtype=dtype), randn(env, tokens, hidden, dtype=dtype)
    w = randn(env, hidden, dtype=dtype)
    row(
        "rms_norm+residual",
        f"T={tokens} H={hidden}",
        4 * tokens * hidden * e,
        lambda: cand.rms_norm(x, w, 1e-6, r),
        lambda: ref.rms_norm(x, w, 1e-6, r),
        "torch ops",
        elementwise,
    )
    row(
        "fused_add_rms_norm",
        f"T={tokens} H={hidden} in place",
        4 * tokens * hidden * e,
        lambda: cand.fused_add_rms_norm(x, r, w, 1e-6),
        lambda: ref.fused_add_rms_norm(x, r, w, 1e-6),
        "torch ops",
        elementwise,
    )
    heads = randn(env, tokens, 8, 128, dtype=dtype)
    hw = randn(env, 128, dtype=dtype)
    row(
        "rms_norm per head",
        f"T={tokens} H=8x128",
        2 * heads.numel() * e,
        lambda: cand.rms_norm(heads, hw, 1e-6),
        lambda: ref.rms_norm(heads, hw, 1e-6),
        "torch ops",
        elementwise,
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
        elementwise,
    )
    tokens = 65536 if not small else 64
    q, k = randn(env, tokens, hq, d, dtype=dtype), randn(env, tokens, hk, d, dtype=dtype)
    cache = rope_cache(env, d)
    positions = randint(env, 0, cache.shape[0], tokens)
    row(
        "rotary_embedding",
        f"T={tokens} Hq={hq} Hk={hk}",
        2 * tokens * (hq + hk) * d * e + tokens * d * 4,
        lambda: cand.rotary_embedding(positions, q, k, cache),
        lambda: ref.rotary_embedding(positions, q, k, cache),
        "torch ops",
        elementwise,
    )
    qkv = randn(env, tokens, (hq + 2 * hk) * d, dtype=dtype)
    qv, kv = qkv[:, : hq * d].view(tokens, hq, d), qkv[:, hq * d : (hq + hk) * d].view(tokens, hk, d)
    qw, kw = randn(env, d, dtype=dtype) + 1, randn(env, d, dtype=dtype) + 1
    qk_bytes = 2 * tokens * (hq + hk) * d * e + tokens * d * 4
    row(
        "qk_norm_rotary",
        f"T={tokens} Hq={hq} Hk={hk} from qkv",
        qk_bytes,
        lambda: cand.qk_norm_rotary(positions, qv, kv, qw, kw, 1e-6, cache),
        lambda: ref.qk_norm_rotary(positions, qv, kv, qw, kw, 1e-6, cache),
        "torch ops",
        elementwise,
    )
    row(
        "qk_norm_rotary",
        f"T={tokens} Hq={hq} Hk={hk} from qkv",
        qk_bytes,
        lambda: cand.qk_norm_rotary(positions, qv, kv, qw, kw, 1e-6, cache),
        lambda: unfused_qk_norm_rotary(cand, positions, qv, kv, qw, kw, cache),
        "ours unfused (5 launches)",
    )
    kc = torch.empty(tokens // 16 + 1, 16, hk, d, dtype=dtype, device=env.device)
    vc = torch.empty_like(kc)
    slots = randperm(env, tokens)
    k2, v2 = randn(env, tokens, hk, d, dtype=dtype), randn(env, tokens, hk, d, dtype=dtype)
    row(
        "store_kv",
        f"T={tokens} Hk={hk}",
        4 * tokens * hk * d * e,
        lambda: cand.store_kv(k2, v2, kc, vc, slots),
        lambda: ref.store_kv(k2, v2, kc, vc, slots),
        "index_copy_",
        elementwise,
    )

    for batch, context in [(64, 4096), (256, 1024), (1, 8192), (16, 2048)] if not small else [(2, 64)]:
        paged = paged_batch(env, [context] * batch, hk, d, 16, dtype)
        qd = randn(env, batch, hq, d, dtype=dtype)
        args = (qd, paged.k_cache, paged.v_cache, paged.block_tables, paged.context_lens, d**-0.5)
        target = (
            ("bandwidth", TARGETS["decode_attention"]) if (batch, context) in ((64, 4096), (2, 64)) else None
        )
        row(
            "decode_attention",
            f"B={batch} ctx={context} 8B heads",
            2 * batch * context * hk * d * e + 2 * qd.numel() * e,
            lambda args=args: cand.decode_attention(*args),
            lambda args=args: ref.decode_attention(*args),
            "gather+SDPA",
            target,
        )

    for batch, length in [(1, 4096), (4, 1024), (1, 8192)] if not small else [(1, 64)]:
        paged = paged_batch(env, [length] * batch, hk, d, 16, dtype)
        qp = randn(env, batch * length, hq, d, dtype=dtype)
        cu = torch.arange(0, batch + 1, dtype=torch.int32, device=env.device) * length
        args = (qp, paged.k_cache, paged.v_cache, cu, paged.context_lens, paged.block_tables, d**-0.5)
        # SDPA (flash) on contiguous, already gathered K/V: the fast path our paged kernel is measured against
        qs = qp.view(batch, length, hq, d).transpose(1, 2)
        ks, vs = randn(env, batch, hk, length, d, dtype=dtype), randn(env, batch, hk, length, d, dtype=dtype)
        row(
            "prefill_attention",
            f"B={batch} T={length} causal 8B heads",
            2 * qp.numel() * e + 2 * batch * length * hk * d * e,
            lambda args=args: cand.prefill_attention(*args),
            lambda qs=qs, ks=ks, vs=vs: F.scaled_dot_product_attention(
                qs, ks, vs, is_causal=True, enable_gqa=True
            ),
            "SDPA",
            ("vs_torch", TARGETS["prefill_vs_sdpa"]),
        )


def unfused_qk_norm_rotary(backend, positions, q, k, q_weight, k_weight, cache):
    """What the model ran before the fusion: dense copies of q and k, a norm of each, rotary in place."""
    q, k = q.contiguous(), k.contiguous()
    q, k = backend.rms_norm(q, q_weight, 1e-6)[0], backend.rms_norm(k, k_weight, 1e-6)[0]
    backend.rotary_embedding(positions, q, k, cache)
    return q, k


def graph_us_per_call(env: Env, fn: Callable[[], object], calls: int = 100) -> float:
    """Device time per call of ``calls`` back-to-back calls captured in one CUDA graph (no host cost
    left: what a launch costs inside the engine's decode graphs). On CPU (dry run) the same callable
    runs eagerly: there are no graphs to capture."""
    if not env.on_gpu:
        return host_us_per_call(env, fn, calls)
    side = torch.cuda.Stream(env.device)
    side.wait_stream(torch.cuda.current_stream(env.device))
    with torch.cuda.stream(side):  # warm-up off the default stream, as capture wants
        for _ in range(3):
            fn()
    torch.cuda.current_stream(env.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    torch.cuda.synchronize(env.device)
    replays = 5
    started = time.perf_counter()
    for _ in range(replays):
        graph.replay()
    torch.cuda.synchronize(env.device)
    elapsed = time.perf_counter() - started
    del graph
    return elapsed / (replays * calls) * 1e6


def launch_overhead(env: Env, report: Report) -> None:
    """Microseconds per call on tiny inputs (one decode token of Qwen3-8B's shapes), eager and inside a
    CUDA graph: our PyCUDA launches against torch's, and the fusions against what they replace."""
    dtype, (hq, hk, d), hidden = torch.bfloat16, HEAD_SHAPES["qwen3-8b"], 4096
    cand, ref = env.candidate, env.reference
    x, r = randn(env, 1, hidden, dtype=dtype), randn(env, 1, hidden, dtype=dtype)
    w = randn(env, hidden, dtype=dtype)
    qkv = randn(env, 1, (hq + 2 * hk) * d, dtype=dtype)
    q, k = qkv[:, : hq * d].view(1, hq, d), qkv[:, hq * d : (hq + hk) * d].view(1, hk, d)
    qw, kw = randn(env, d, dtype=dtype) + 1, randn(env, d, dtype=dtype) + 1
    cache = rope_cache(env, d)
    positions = randint(env, 0, cache.shape[0], 1)
    cases = {
        "rms_norm (one launch each)": (
            lambda: cand.rms_norm(x, w, 1e-6),
            lambda: F.rms_norm(x, (hidden,), w, 1e-6),
            "F.rms_norm",
        ),
        "fused_add_rms_norm": (
            lambda: cand.fused_add_rms_norm(x, r, w, 1e-6),
            lambda: ref.fused_add_rms_norm(x, r, w, 1e-6),
            "torch ops",
        ),
        "qk_norm_rotary": (
            lambda: cand.qk_norm_rotary(positions, q, k, qw, kw, 1e-6, cache),
            lambda: ref.qk_norm_rotary(positions, q, k, qw, kw, 1e-6, cache),
            "torch ops",
        ),
        "qk_norm_rotary vs ours unfused": (
            lambda: cand.qk_norm_rotary(positions, q, k, qw, kw, 1e-6, cache),
            lambda: unfused_qk_norm_rotary(cand, positions, q, k, qw, kw, cache),
            "ours unfused (5 launches)",
        ),
    }
    for name, (ours, theirs, theirs_name) in cases.items():
        entry = {
            "op": name,
            "other": theirs_name,
            "ours_eager_us": round(host_us_per_call(env, ours), 2),
            "other_eager_us": round(host_us_per_call(env, theirs), 2),
            "ours_graph_us": round(graph_us_per_call(env, ours), 2),
            "other_graph_us": round(graph_us_per_call(env, theirs), 2),
        }
        report.launches.append(entry)
        print(
            f"launch {name:32s} eager: ours {entry['ours_eager_us']:7.1f} us, {theirs_name} "
            f"{entry['other_eager_us']:7.1f}; in a graph: ours {entry['ours_graph_us']:7.1f}, "
            f"{theirs_name} {entry['other_graph_us']:7.1f}",
            flush=True,
        )


def format_table(report: Report) -> str:
    lines = [
        "| kernel | shape | ms | floor ms | of copy bw | torch equivalent | torch ms | vs torch | target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t in report.timings:
        lines.append(
            f"| {t['kernel']} | {t['shape']} | {t['ms']:.3f} | {t['floor_ms']:.3f} | "
            f"{t['of_bandwidth']:.0%} | {t['torch']} | {t['torch_ms']:.3f} | {t['speedup_vs_torch']:.2f}x | "
            f"{t.get('target', '')} |"
        )
    if report.launches:
        lines += [
            "",
            "| launch (T=1, 8B shapes) | ours eager us | other | other eager us | ours in graph us | "
            "other in graph us |",
            "|---|---|---|---|---|---|",
        ]
        for entry in report.launches:
            lines.append(
                f"| {entry['op']} | {entry['ours_eager_us']:.1f} | {entry['other']} | "
                f"{entry['other_eager_us']:.1f} | {entry['ours_graph_us']:.1f} | "
                f"{entry['other_graph_us']:.1f} |"
            )
    if report.engine:
        goal = TARGETS["engine_vs_hf"]
        lines += [
            "",
            "| model | batch | eager tok/s | graphs tok/s | transformers tok/s | graphs vs transformers |",
            "|---|---|---|---|---|---|",
        ]
        for e in report.engine:
            verdict = (
                f" ({'met' if e['graphs_vs_hf'] >= goal else 'MISSED'} >= {goal:g}x)"
                if e["batch"] == 64
                else ""
            )
            lines.append(
                f"| {e['model']} | {e['batch']} | {e['eager']:.1f} | {e['graphs']:.1f} | {e['hf']:.1f} | "
                f"{e['graphs_vs_hf']:.2f}x{verdict} |"
            )
    return "\n".join(lines)


def make_env(args: argparse.Namespace) -> Env:
    if args.dry_run:
        from mili.kernels.checked_backend import CheckedTorchBackend

        device = torch.device("cpu")
        candidate = CheckedTorchBackend(device)
    else:
        from mili.kernels.cuda_backend import CudaBackend

        device = torch.device("cuda", 0)
        candidate = CudaBackend(device)
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}", flush=True)
    generator = torch.Generator(device=device).manual_seed(0)
    return Env(device, candidate, TorchBackend(), args.dry_run, args.quick, generator)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, small: checks this script's code paths")
    parser.add_argument("--quick", action="store_true", help="fewer cases")
    parser.add_argument("--out", type=Path, default=Path(".gpu-check-out"))
    parser.add_argument("--skip-engine", action="store_true")
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument(
        "--sanitizer-smoke", action="store_true", help="one small case of each kernel, then exit"
    )
    parser.add_argument("--layers-8b", type=int, default=12, help="layers of the 8B-shaped model (of 36)")
    parser.add_argument(
        "--deadline",
        type=float,
        help="unix time after which no further check starts (they are listed as skipped; exit status 5)",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run to check the script on CPU", file=sys.stderr)
        return 2
    env = make_env(args)
    if args.sanitizer_smoke:
        return sanitizer_smoke(env)
    report = Report(deadline=args.deadline)

    print("== kernels", flush=True)
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        check_elementwise(env, report, dtype)
    check_decode(env, report, torch.bfloat16, {**HEAD_SHAPES, **GQA_VARIANTS})
    check_decode(env, report, torch.float32, {"qwen3-8b": HEAD_SHAPES["qwen3-8b"]})
    check_prefill(env, report, torch.bfloat16)
    if not args.quick:
        check_decode(env, report, torch.float16, HEAD_SHAPES)
        check_prefill(env, report, torch.float16)
    check_head_dim_64(env, report)
    check_self_check(env, report, model_kernel_shapes(env.dry_run))
    elapsed = time.monotonic() - started
    print(f"kernels: {len(report.passed)} passed, {len(report.failed)} failed ({elapsed:.0f} s)")

    if not args.skip_engine:
        print("== engine", flush=True)
        check_engine(env, report)
    if not args.skip_bench:
        print("== timing (bf16)", flush=True)
        report.check("kernel benchmark", lambda: benchmark(env, report))
        report.check("launch overhead", lambda: launch_overhead(env, report))
        if not args.skip_engine:
            report.check("engine benchmark", lambda: engine_benchmark(env, report, args.layers_8b))

    table = format_table(report)
    print(table)
    for note in report.notes:
        print(f"note: {note}")
    elapsed = time.monotonic() - started
    print(
        f"total: {len(report.passed)} passed, {len(report.failed)} failed, {len(report.skipped)} skipped "
        f"in {elapsed:.0f} s"
    )
    for failure in report.failed:
        print(f"FAILED {failure}")
    for name in report.skipped:
        print(f"SKIPPED (time budget) {name}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report.__dict__, indent=1))
    (args.out / "gpu_check_table.md").write_text(table + "\n")
    return 1 if report.failed else 5 if report.skipped else 0


if __name__ == "__main__":
    sys.exit(main())
