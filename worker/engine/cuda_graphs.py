"""CUDA graphs for decode steps: one captured forward per batch-size bucket, replayed on static inputs.

A decode step of a small model is launch-bound (a few hundred short kernels); replaying a captured
graph issues them all at once. Shapes must be static, so each bucket size (1, 2, 4, 8, then every 16,
up to ``max_num_seqs``) gets its own graph, a batch runs in the smallest bucket that holds it, and the
rows past the batch are padding: they store nothing (slot -1) and attend to one token of block 0.
Block tables are captured at their full width (the model's longest context), so the split-K count of
the CUDA decode kernel is fixed at capture; partitions past a sequence's context exit at once.

Our PyCUDA launches join torch's capture stream through events (see `mili.kernels.cuda_backend`), so
they are captured with torch's own kernels. Only a backend whose decode path never reads the device
from the host can be captured: the CUDA backend (the torch reference reads ``context_lens.max()``).

Memory: the graphs share one private pool. `measure_capture_bytes` captures the largest bucket once
before the KV pool is sized, so the pool is sized from what is left after the graphs (vLLM does the
same); the real capture follows the pool's allocation, since graphs bake in the cache's addresses.
"""

from __future__ import annotations

import bisect
import logging

import torch
from torch import nn

from mili.kernels import KernelBackend
from mili.kernels.self_check import SelfCheckFailed, compare
from mili.worker.config import EngineConfig
from mili.worker.engine.context import AttentionContext, set_context

logger = logging.getLogger(__name__)

GRAPH_BACKENDS = ("cuda",)


def capture_sizes(max_num_seqs: int) -> list[int]:
    """The bucket sizes: 1, 2, 4, 8, then multiples of 16, and ``max_num_seqs`` itself."""
    sizes = {s for s in (1, 2, 4, 8) if s < max_num_seqs} | set(range(16, max_num_seqs, 16))
    return sorted(sizes | {max_num_seqs})


def bucket_for(num_seqs: int, sizes: list[int]) -> int | None:
    """The smallest bucket holding ``num_seqs`` sequences; None past the largest."""
    index = bisect.bisect_left(sizes, num_seqs)
    return sizes[index] if index < len(sizes) else None


def graphs_off_reason(config: EngineConfig, device: torch.device, backend: KernelBackend) -> str | None:
    """Why decode runs eagerly on this engine, or None when it can use graphs."""
    if config.enforce_eager:
        return "enforce_eager is set"
    if device.type != "cuda":
        return f"the engine runs on {device}"
    if backend.name not in GRAPH_BACKENDS:
        return f"the {backend.name} kernels read the device from the host in decode"
    return None


class DecodeGraphs:
    """Captured decode forwards over static input buffers, one graph per bucket size."""

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        sizes: list[int],
        max_blocks_per_seq: int,
        hidden_size: int,
        dtype: torch.dtype,
    ) -> None:
        self.model, self.device, self.sizes = model, device, sizes
        largest = sizes[-1]
        on_device = {"device": device}
        self.input_ids = torch.zeros(largest, dtype=torch.long, **on_device)
        self.positions = torch.zeros(largest, dtype=torch.long, **on_device)
        self.slot_mapping = torch.full((largest,), -1, dtype=torch.long, **on_device)
        self.block_tables = torch.zeros((largest, max_blocks_per_seq), dtype=torch.int32, **on_device)
        self.context_lens = torch.ones(largest, dtype=torch.int32, **on_device)
        self.hidden = torch.zeros((largest, hidden_size), dtype=dtype, **on_device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._pool = None

    @property
    def max_blocks_per_seq(self) -> int:
        return self.block_tables.shape[1]

    @torch.inference_mode()
    def capture(self, sizes: list[int] | None = None) -> None:
        """Capture each bucket, largest first (the smaller ones reuse the pool's memory)."""
        for size in sorted(sizes or self.sizes, reverse=True):
            self._forward(size)  # eager first: lazy loads and allocations happen outside the capture
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                self.hidden[:size] = self._forward(size)
            self._pool = self._pool or graph.pool()
            self.graphs[size] = graph
        torch.cuda.synchronize(self.device)

    def can_run(self, num_seqs: int, block_table_width: int) -> bool:
        return num_seqs <= self.sizes[-1] and block_table_width <= self.max_blocks_per_seq

    @torch.inference_mode()
    def run(
        self, input_ids: torch.Tensor, positions: torch.Tensor, context: AttentionContext
    ) -> torch.Tensor:
        """Replay the bucket for this decode-only step; returns the hidden states ``[num_seqs, H]``."""
        n = input_ids.shape[0]
        size = bucket_for(n, self.sizes)
        if size is None or size not in self.graphs:
            raise ValueError(f"no captured graph holds a decode batch of {n}")
        tables = context.decode_block_tables
        width = tables.shape[1]
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(positions)
        self.slot_mapping[:n].copy_(context.slot_mapping)
        self.block_tables[:n, :width].copy_(tables)
        self.block_tables[:n, width:].fill_(-1)
        self.context_lens[:n].copy_(context.decode_context_lens)
        self._pad(n, size)
        self.graphs[size].replay()
        return self.hidden[:n]

    def _pad(self, n: int, size: int) -> None:
        """Rows past the batch: no store, one token of block 0 to attend to."""
        self.slot_mapping[n:size].fill_(-1)
        self.block_tables[n:size, 0].fill_(0)
        self.context_lens[n:size].fill_(1)

    def _forward(self, size: int) -> torch.Tensor:
        set_context(
            AttentionContext(
                slot_mapping=self.slot_mapping[:size],
                num_decode_tokens=size,
                decode_block_tables=self.block_tables[:size],
                decode_context_lens=self.context_lens[:size],
            )
        )
        try:
            return self.model(self.input_ids[:size], self.positions[:size])
        finally:
            set_context(None)

    @torch.inference_mode()
    def self_check(self, kv_cache: torch.Tensor, vocab_size: int, block_size: int) -> None:
        """A replay against the eager forward on random tokens over random cache contents (the first
        few blocks, zeroed again afterwards). Raises `SelfCheckFailed` ("cuda_graphs") on a mismatch."""
        n = min(3, self.sizes[-1])
        blocks = min(4, kv_cache.shape[2], self.max_blocks_per_seq)
        generator = torch.Generator(device=self.device).manual_seed(0)
        scratch = kv_cache[:, :, :blocks]
        scratch.copy_(torch.randn(scratch.shape, generator=generator, device=self.device).to(scratch.dtype))
        try:
            input_ids = torch.randint(0, vocab_size, (n,), generator=generator, device=self.device)
            context_lens = torch.randint(
                1, blocks * block_size + 1, (n,), generator=generator, device=self.device
            )
            table = torch.arange(blocks, dtype=torch.int32, device=self.device).expand(n, blocks)
            context = AttentionContext(
                slot_mapping=torch.full((n,), -1, dtype=torch.long, device=self.device),  # no stores
                num_decode_tokens=n,
                decode_block_tables=table.contiguous(),
                decode_context_lens=context_lens.to(torch.int32),
            )
            positions = context_lens.long() - 1
            set_context(context)
            try:
                eager = self.model(input_ids, positions)
            finally:
                set_context(None)
            replayed = self.run(input_ids, positions, context).clone()
            compare("cuda_graphs", replayed, eager)
        except SelfCheckFailed:
            raise
        except Exception as exc:
            raise SelfCheckFailed("cuda_graphs", f"{type(exc).__name__}: {exc}") from exc
        finally:
            scratch.zero_()


def measure_capture_bytes(graphs: DecodeGraphs) -> int:
    """Device memory one capture of the largest bucket takes (graph pool plus driver-side state),
    measured and released again, for sizing the KV pool before the real capture."""
    torch.cuda.synchronize(graphs.device)
    free_before, _ = torch.cuda.mem_get_info(graphs.device)
    graphs.capture([graphs.sizes[-1]])
    torch.cuda.synchronize(graphs.device)
    free_after, _ = torch.cuda.mem_get_info(graphs.device)
    graphs.graphs.clear()
    graphs._pool = None
    torch.cuda.empty_cache()
    return max(0, free_before - free_after)
