"""`KernelBackend` on our CUDA C kernels (kernels/cuda/*.cu), loaded and launched through PyCUDA.

Importing this module imports pycuda, so only `mili.kernels.selection` imports it, and only for a CUDA
device. Memory is torch's: kernels get ``tensor.data_ptr()`` and outputs are allocated with torch.

Context: torch and PyCUDA share the device's *primary* context. Torch creates it when it first uses
the device; we retain the same one (``Device.retain_primary_context``) and push it around module
loads and launches, so the pointers torch hands us are valid in it and the launch works from any
thread (the engine may run the model off the main thread).

Stream order: PyCUDA launches on its own ``Stream`` objects or on stream 0; it cannot launch on a
foreign stream handle. Torch's default stream *is* stream 0 (the legacy default stream), so when it is
current we launch there and our kernels are ordered with torch's work exactly as torch's own kernels
are. When another stream is current (``torch.cuda.stream(...)``, CUDA-graph capture), we fork and join
through events: our side stream waits for the current stream, runs the kernels, and the current
stream waits for it, so everything before runs first and everything after sees the results (under
graph capture these become graph edges). Tensors allocated for the op on the current stream stay
safe: the current stream cannot reuse their memory before it has waited for the side stream.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pycuda.driver as cuda
import torch

from mili.kernels import cuda_build
from mili.kernels import cuda_checks as checks

THREADS_ELEMENTWISE = 256  # kElementwiseThreads in elementwise.cu
THREADS_ATTENTION = 128  # kDecodeThreads / kPrefillThreads
PREFILL_BLOCK_ROWS = 64  # kBlockRows in prefill_attention.cu
LOG2_E = 1.4426950408889634


def heads_per_cta(group: int) -> int:
    """Query heads a decode CTA takes together: the largest of 8, 4, 2, 1 dividing the GQA group."""
    return next(h for h in (8, 4, 2, 1) if group % h == 0)


class CudaBackend:
    """Our kernels on one CUDA device; see the module docstring for context and stream handling."""

    name = "cuda"

    def __init__(self, device: torch.device | str, cubin_dirs: tuple[Path, ...] = ()) -> None:
        device = torch.device(device)
        if device.type != "cuda":
            raise ValueError(f"CudaBackend needs a CUDA device, got {device}")
        index = device.index if device.index is not None else torch.cuda.current_device()
        self.device = torch.device("cuda", index)
        torch.zeros(1, device=self.device)  # makes torch create (and make current) the primary context
        cuda.init()
        self._context = cuda.Device(index).retain_primary_context()
        arch = cuda_build.arch_for_capability(torch.cuda.get_device_capability(index))
        cubins = cuda_build.find_cubins(arch, cubin_dirs)
        self._functions: dict[str, cuda.Function] = {}
        with self._pushed():
            self._modules = {stem: cuda.module_from_file(str(path)) for stem, path in cubins.items()}
            self._side_stream = cuda.Stream()
        self._side_torch = torch.cuda.ExternalStream(self._side_stream.handle, device=self.device)

    # -- plumbing -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _pushed(self) -> Iterator[None]:
        self._context.push()
        try:
            yield
        finally:
            cuda.Context.pop()

    @contextlib.contextmanager
    def _launch_stream(self) -> Iterator[cuda.Stream | None]:
        """The PyCUDA stream to launch on, in order with torch's current stream (module docstring)."""
        current = torch.cuda.current_stream(self.device)
        with self._pushed():
            if current.cuda_stream == 0:
                yield None  # stream 0: torch's default stream itself
                return
            self._side_torch.wait_stream(current)
            yield self._side_stream
            current.wait_stream(self._side_torch)

    def _function(self, kernel: str, variant: str) -> cuda.Function:
        name = f"{kernel}_{variant}"
        function = self._functions.get(name)
        if function is None:
            module = self._modules[checks.SOURCE_OF[kernel]]
            with self._pushed():
                function = module.get_function(name)
                function.prepare(checks.SIGNATURES[kernel])
            self._functions[name] = function
        return function

    # -- ops ------------------------------------------------------------------------------------

    def rms_norm(
        self, x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        checks.check_rms_norm(x, weight, residual, self.device)
        hidden = x.shape[-1]
        rows = x.numel() // hidden if hidden else 0
        out = torch.empty_like(x)
        residual_out = torch.empty_like(x) if residual is not None else None
        if rows:
            function = self._function("rms_norm", checks.DTYPE_SUFFIX[x.dtype])
            rows_per_block = THREADS_ELEMENTWISE // 32
            with self._launch_stream() as stream:
                function.prepared_async_call(
                    (math.ceil(rows / rows_per_block), 1, 1),
                    (THREADS_ELEMENTWISE, 1, 1),
                    stream,
                    out.data_ptr(),
                    residual_out.data_ptr() if residual_out is not None else 0,
                    x.data_ptr(),
                    residual.data_ptr() if residual is not None else 0,
                    weight.data_ptr(),
                    rows,
                    hidden,
                    np.float32(eps),
                )
        return out, residual_out

    def fused_add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> torch.Tensor:
        checks.check_fused_add_rms_norm(x, residual, weight, self.device)
        hidden = x.shape[-1]
        rows = x.numel() // hidden if hidden else 0
        out = torch.empty_like(x)
        if rows:
            function = self._function("fused_add_rms_norm", checks.DTYPE_SUFFIX[x.dtype])
            with self._launch_stream() as stream:
                function.prepared_async_call(
                    (math.ceil(rows / (THREADS_ELEMENTWISE // 32)), 1, 1),
                    (THREADS_ELEMENTWISE, 1, 1),
                    stream,
                    out.data_ptr(),
                    residual.data_ptr(),
                    x.data_ptr(),
                    weight.data_ptr(),
                    rows,
                    hidden,
                    np.float32(eps),
                )
        return out

    def rotary_embedding(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor
    ) -> None:
        checks.check_rotary(positions, q, k, cos_sin_cache, self.device)
        positions = positions.long()
        tokens, num_q_heads, head_dim = q.shape
        if not tokens:
            return
        function = self._function("rotary_embedding", checks.DTYPE_SUFFIX[q.dtype])
        with self._launch_stream() as stream:
            function.prepared_async_call(
                (tokens, 1, 1),
                (THREADS_ELEMENTWISE, 1, 1),
                stream,
                q.data_ptr(),
                k.data_ptr(),
                positions.data_ptr(),
                cos_sin_cache.data_ptr(),
                q.stride(0),
                k.stride(0),
                num_q_heads,
                k.shape[1],
                head_dim,
            )

    def qk_norm_rotary(
        self,
        positions: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        q_weight: torch.Tensor | None,
        k_weight: torch.Tensor | None,
        eps: float,
        cos_sin_cache: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One launch: head_dim / 16 threads per (token, head), all heads of all tokens."""
        checks.check_qk_norm_rotary(positions, q, k, q_weight, k_weight, cos_sin_cache, self.device)
        positions = positions.long()
        tokens, num_q_heads, head_dim = q.shape
        num_kv_heads = k.shape[1]
        q_out = torch.empty((tokens, num_q_heads, head_dim), dtype=q.dtype, device=q.device)
        k_out = torch.empty((tokens, num_kv_heads, head_dim), dtype=k.dtype, device=k.device)
        if not tokens:
            return q_out, k_out
        threads = tokens * (num_q_heads + num_kv_heads) * (head_dim // 16)
        function = self._function("qk_norm_rotary", checks.DTYPE_SUFFIX[q.dtype])
        with self._launch_stream() as stream:
            function.prepared_async_call(
                (math.ceil(threads / THREADS_ELEMENTWISE), 1, 1),
                (THREADS_ELEMENTWISE, 1, 1),
                stream,
                q_out.data_ptr(),
                k_out.data_ptr(),
                q.data_ptr(),
                k.data_ptr(),
                q_weight.data_ptr() if q_weight is not None else 0,
                k_weight.data_ptr() if k_weight is not None else 0,
                positions.data_ptr(),
                cos_sin_cache.data_ptr(),
                q.stride(0),
                k.stride(0),
                tokens,
                num_q_heads,
                num_kv_heads,
                head_dim,
                np.float32(eps),
            )
        return q_out, k_out

    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        checks.check_silu_and_mul(x, self.device)
        rows, inner = x.shape[0], x.shape[1] // 2
        out = torch.empty((rows, inner), dtype=x.dtype, device=x.device)
        if rows:
            function = self._function("silu_and_mul", checks.DTYPE_SUFFIX[x.dtype])
            with self._launch_stream() as stream:
                function.prepared_async_call(
                    (rows, math.ceil(inner / (8 * THREADS_ELEMENTWISE)), 1),
                    (THREADS_ELEMENTWISE, 1, 1),
                    stream,
                    out.data_ptr(),
                    x.data_ptr(),
                    inner,
                )
        return out

    def store_kv(
        self,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        checks.check_store_kv(k, v, k_cache, v_cache, slot_mapping, self.device)
        slot_mapping = slot_mapping.long()
        if not k.shape[0]:
            return
        function = self._function("store_kv", checks.DTYPE_SUFFIX[k.dtype])
        with self._launch_stream() as stream:
            function.prepared_async_call(
                (k.shape[0], 1, 1),
                (THREADS_ELEMENTWISE, 1, 1),
                stream,
                k_cache.data_ptr(),
                v_cache.data_ptr(),
                k.data_ptr(),
                v.data_ptr(),
                slot_mapping.data_ptr(),
                k.stride(0),
                v.stride(0),
                k.shape[1] * k.shape[2],
            )

    def decode_attention(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        block_tables: torch.Tensor,
        context_lens: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        """Split-K over DECODE_PARTITION-token partitions when the block table allows longer contexts.
        The split count comes from block_tables' width (no device->host read, so CUDA graphs can
        capture it); trim block_tables to the batch's longest sequence to avoid idle CTAs."""
        checks.check_decode(q, k_cache, v_cache, block_tables, context_lens, self.device)
        batch, num_q_heads, head_dim = q.shape
        out = torch.empty((batch, num_q_heads, head_dim), dtype=q.dtype, device=q.device)
        if not batch:
            return out
        _, block_size, num_kv_heads, _ = k_cache.shape
        max_blocks = block_tables.shape[1]
        group = num_q_heads // num_kv_heads
        heads = heads_per_cta(group)
        splits = checks.check_decode_splits(block_tables, block_size)
        suffix = checks.DTYPE_SUFFIX[q.dtype]
        attention = self._function("decode_attention", f"{suffix}_d{head_dim}_h{heads}")
        if splits > 1:
            partial_out = torch.empty(
                (batch, num_q_heads, splits, head_dim), dtype=torch.float32, device=q.device
            )
            partial_max = torch.empty((batch, num_q_heads, splits), dtype=torch.float32, device=q.device)
            partial_sum = torch.empty_like(partial_max)
            partials = (partial_out.data_ptr(), partial_max.data_ptr(), partial_sum.data_ptr())
        else:
            partials = (0, 0, 0)
        with self._launch_stream() as stream:
            attention.prepared_async_call(
                (num_kv_heads * group // heads, batch, splits),
                (THREADS_ATTENTION, 1, 1),
                stream,
                out.data_ptr(),
                *partials,
                q.data_ptr(),
                k_cache.data_ptr(),
                v_cache.data_ptr(),
                block_tables.data_ptr(),
                context_lens.data_ptr(),
                q.stride(0),
                max_blocks,
                block_size,
                num_kv_heads,
                num_q_heads,
                np.float32(scale),
            )
            if splits > 1:
                self._function("decode_reduce", suffix).prepared_async_call(
                    (num_q_heads, batch, 1),
                    (THREADS_ATTENTION, 1, 1),
                    stream,
                    out.data_ptr(),
                    *partials,
                    context_lens.data_ptr(),
                    splits,
                    head_dim,
                )
        return out

    def prefill_attention(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        cu_seqlens_q: torch.Tensor,
        context_lens: torch.Tensor,
        block_tables: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        """The grid is an upper bound on query tiles (ceil(T / 64) + batch); CTAs past the last real
        tile exit at once, so no device->host read is needed."""
        checks.check_prefill(q, k_cache, v_cache, cu_seqlens_q, context_lens, block_tables, self.device)
        tokens, num_q_heads, head_dim = q.shape
        out = torch.empty((tokens, num_q_heads, head_dim), dtype=q.dtype, device=q.device)
        num_seqs = context_lens.shape[0]
        if not tokens or not num_seqs:
            return out
        _, block_size, num_kv_heads, _ = k_cache.shape
        function = self._function("prefill_attention", f"{checks.DTYPE_SUFFIX[q.dtype]}_d{head_dim}")
        with self._launch_stream() as stream:
            function.prepared_async_call(
                (math.ceil(tokens / PREFILL_BLOCK_ROWS) + num_seqs, num_q_heads, 1),
                (THREADS_ATTENTION, 1, 1),
                stream,
                out.data_ptr(),
                q.data_ptr(),
                k_cache.data_ptr(),
                v_cache.data_ptr(),
                cu_seqlens_q.data_ptr(),
                context_lens.data_ptr(),
                block_tables.data_ptr(),
                q.stride(0),
                num_seqs,
                block_tables.shape[1],
                block_size,
                num_kv_heads,
                num_q_heads,
                np.float32(scale * LOG2_E),
            )
        return out
