"""Tensors: load the model, own the paged KV cache, turn a scheduled batch into one forward pass."""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path

import torch

from mili.kernels import KernelShapes, choose_backend
from mili.kernels.self_check import SelfCheckFailed
from mili.worker.config import EngineConfig
from mili.worker.engine.context import AttentionContext, set_context
from mili.worker.engine.cpu_info import engine_threads, has_native_bf16
from mili.worker.engine.cuda_graphs import (
    DecodeGraphs,
    capture_sizes,
    graphs_off_reason,
    measure_capture_bytes,
)
from mili.worker.engine.prompt_logprobs import gather_prompt_logprobs
from mili.worker.engine.sampler import Sampler, SampleResult
from mili.worker.engine.scheduler import ScheduledBatch, ScheduledSequence
from mili.worker.models.loader import load_model
from mili.worker.models.model_config import ModelConfig

logger = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for, but torch sees no CUDA device")
    return torch.device(name)


def resolve_dtype(name: str, model_config: ModelConfig, device: torch.device) -> torch.dtype:
    if name == "auto":
        # A CPU with AMX or AVX512-BF16 runs bf16 matmuls natively, about twice as fast as float32;
        # elsewhere torch emulates bf16 and float32 is faster. GPUs run the checkpoint's half dtype.
        if device.type == "cpu":
            return torch.bfloat16 if has_native_bf16() else torch.float32
        return model_config.torch_dtype if model_config.torch_dtype != torch.float32 else torch.bfloat16
    return getattr(torch, name)


def kernel_shapes(model_config: ModelConfig, config: EngineConfig, dtype: torch.dtype) -> KernelShapes:
    """The shapes the kernel self-check draws its inputs in: this model's."""
    mc = model_config
    return KernelShapes(
        hidden_size=mc.hidden_size,
        intermediate_size=mc.intermediate_size,
        num_heads=mc.num_heads,
        num_kv_heads=mc.num_kv_heads,
        head_dim=mc.head_dim,
        block_size=config.block_size,
        dtype=dtype,
        qk_norm=mc.qk_norm,
    )


def token_slots(block_table: list[int], block_size: int, start: int, end: int) -> list[int]:
    """Cache slots of positions ``start..end-1`` of a sequence: one range per block touched."""
    slots: list[int] = []
    position = start
    while position < end:
        block, offset = divmod(position, block_size)
        stop = min(end, (block + 1) * block_size)
        base = block_table[block] * block_size
        slots.extend(range(base + offset, base + offset + stop - position))
        position = stop
    return slots


class ModelRunner:
    def __init__(self, config: EngineConfig, model_dir: Path, model_config: ModelConfig) -> None:
        self.config = config
        self.model_config = model_config
        self.block_size = config.block_size
        self.device = resolve_device(config.device)
        if self.device.type == "cpu":
            # By default one thread per physical core (SMT siblings share the vector units matmuls
            # saturate), within the container's CPU limit.
            torch.set_num_threads(config.cpu_threads or engine_threads())
        self.dtype = resolve_dtype(config.dtype, model_config, self.device)
        self.kernel_choice = choose_backend(
            config.kernels, self.device, kernel_shapes(model_config, config, self.dtype)
        )
        self.backend = self.kernel_choice.backend
        self.model = load_model(model_dir, model_config, self.backend, self.dtype, self.device)
        self.graphs = self._decode_graphs()
        self.num_blocks = self._size_kv_pool()
        self.kv_cache = self._allocate_kv_cache()
        if self.graphs is not None:
            self._capture_graphs()
        self.sampler = Sampler(config.seed, model_config.vocab_size, self.device)

    # --- CUDA graphs (mili.worker.engine.cuda_graphs) -------------------------------------------------
    def _decode_graphs(self) -> DecodeGraphs | None:
        off = graphs_off_reason(self.config, self.device, self.backend)
        if off is not None:
            logger.info("CUDA graphs off: %s", off)
            return None
        mc = self.model_config
        max_len = min(self.config.max_model_len or mc.max_position_embeddings, mc.max_position_embeddings)
        sizes = capture_sizes(self.config.max_num_seqs)
        width = -(-max_len // self.block_size)
        return DecodeGraphs(self.model, self.device, sizes, width, mc.hidden_size, self.dtype)

    def _capture_graphs(self) -> None:
        """Capture every bucket, then check a replay against the eager forward: on a mismatch
        ``kernels=cuda`` refuses to start, otherwise decode runs eagerly with an ERROR line."""
        started = time.perf_counter()
        try:
            self.graphs.capture()
            self.graphs.self_check(self.kv_cache, self.model_config.vocab_size, self.block_size)
        except SelfCheckFailed as failure:
            if self.config.kernels == "cuda":
                raise RuntimeError(f"CUDA graphs failed their self-check: {failure}") from failure
            logger.error("CUDA graphs off, they failed their self-check: %s", failure)
            self.graphs = None
            return
        logger.info(
            "CUDA graphs: %d decode buckets up to %d captured and checked in %.2f s",
            len(self.graphs.sizes),
            self.graphs.sizes[-1],
            time.perf_counter() - started,
        )

    # --- KV cache ---------------------------------------------------------------------------------
    @property
    def bytes_per_block(self) -> int:
        mc = self.model_config
        return 2 * mc.num_layers * self.block_size * mc.num_kv_heads * mc.head_dim * self.dtype.itemsize

    def _size_kv_pool(self) -> int:
        if self.config.num_kv_blocks is not None:
            return self.config.num_kv_blocks
        on_gpu = self.device.type == "cuda"
        budget = self._gpu_kv_budget() if on_gpu else self.config.cpu_kv_cache_bytes
        num_blocks = budget // self.bytes_per_block
        if num_blocks < 1:
            raise RuntimeError(f"no memory left for the KV cache (budget {budget} bytes)")
        return int(num_blocks)

    def _gpu_kv_budget(self) -> int:
        """Free memory × utilization after a warm-up pass at the full token budget has set the peak."""
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        num_tokens = min(self.config.max_num_batched_tokens, self.model_config.max_position_embeddings)
        warmup_blocks = -(-num_tokens // self.block_size)
        self._bind_kv_cache(self._new_kv_tensor(warmup_blocks))
        self.warm_up(num_tokens)
        graph_bytes = measure_capture_bytes(self.graphs) if self.graphs is not None else 0
        self._bind_kv_cache(None)
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        _, total = torch.cuda.mem_get_info(self.device)
        return int(total * self.config.gpu_memory_utilization) - peak - graph_bytes

    def _new_kv_tensor(self, num_blocks: int) -> torch.Tensor:
        mc = self.model_config
        shape = (2, mc.num_layers, num_blocks, self.block_size, mc.num_kv_heads, mc.head_dim)
        return torch.zeros(shape, dtype=self.dtype, device=self.device)

    def _allocate_kv_cache(self) -> torch.Tensor:
        kv_cache = self._new_kv_tensor(self.num_blocks)
        self._bind_kv_cache(kv_cache)
        logger.info(
            "KV pool: %d blocks × %d tokens = %d tokens, %.1f MiB (%s on %s)",
            self.num_blocks,
            self.block_size,
            self.num_blocks * self.block_size,
            kv_cache.numel() * kv_cache.element_size() / 2**20,
            self.dtype,
            self.device,
        )
        return kv_cache

    def _bind_kv_cache(self, kv_cache: torch.Tensor | None) -> None:
        for i, layer in enumerate(self.model.model.layers):
            attn = layer.self_attn
            attn.k_cache = kv_cache[0, i] if kv_cache is not None else torch.empty(0)
            attn.v_cache = kv_cache[1, i] if kv_cache is not None else torch.empty(0)

    @torch.inference_mode()
    def warm_up(self, num_tokens: int) -> None:
        """One prefill of ``num_tokens`` dummy tokens through blocks 0.. (their contents are scratch)."""
        num_blocks = -(-num_tokens // self.block_size)
        table = torch.arange(num_blocks, dtype=torch.int32, device=self.device).unsqueeze(0)
        positions = torch.arange(num_tokens, device=self.device)
        set_context(
            AttentionContext(
                slot_mapping=positions,
                num_decode_tokens=0,
                prefill_cu_seqlens_q=torch.tensor([0, num_tokens], dtype=torch.int32, device=self.device),
                prefill_context_lens=torch.tensor([num_tokens], dtype=torch.int32, device=self.device),
                prefill_block_tables=table,
            )
        )
        try:
            hidden = self.model(torch.zeros(num_tokens, dtype=torch.long, device=self.device), positions)
            self.model.compute_logits(hidden[-1:])
        finally:
            set_context(None)

    # --- one step ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, batch: ScheduledBatch, eos_token_ids: frozenset[int]) -> list[SampleResult]:
        """Forward the batch; returns one sample per entry whose ``samples`` is set, in batch order."""
        input_ids, positions, context, logits_rows = self._prepare(batch)
        if self._graph_can_run(batch, context):
            hidden = self.graphs.run(input_ids, positions, context)
        else:
            set_context(context)
            try:
                hidden = self.model(input_ids, positions)
            finally:
                set_context(None)
        if batch.prefills:
            gather_prompt_logprobs(batch, hidden, self.model.compute_logits)
        seqs = [entry.seq for entry in batch.entries if entry.samples]
        if not seqs:  # only prefill chunks that end before their prompt does
            return []
        return self.sampler(self.model.compute_logits(hidden[logits_rows]), seqs, eos_token_ids)

    def _graph_can_run(self, batch: ScheduledBatch, context: AttentionContext) -> bool:
        return (
            self.graphs is not None
            and not batch.prefills
            and self.graphs.can_run(len(batch.decodes), context.decode_block_tables.shape[1])
        )

    def _prepare(
        self, batch: ScheduledBatch
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionContext, torch.Tensor]:
        token_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        logits_rows: list[int] = []
        for entry in batch.entries:
            seq, start = entry.seq, entry.seq.num_computed_tokens
            end = start + entry.num_tokens
            token_ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            slots.extend(token_slots(seq.block_table, self.block_size, start, end))
            if entry.samples:
                logits_rows.append(len(token_ids) - 1)
        context = AttentionContext(
            slot_mapping=self._upload(slots, torch.long),
            num_decode_tokens=len(batch.decodes),
        )
        if batch.decodes:
            context.decode_block_tables = self._block_tables(batch.decodes)
            context.decode_context_lens = self._int32([e.seq.num_computed_tokens + 1 for e in batch.decodes])
        if batch.prefills:
            lengths = [e.num_tokens for e in batch.prefills]
            context.prefill_cu_seqlens_q = self._int32([0, *itertools.accumulate(lengths)])
            context.prefill_context_lens = self._int32(
                [e.seq.num_computed_tokens + e.num_tokens for e in batch.prefills]
            )
            context.prefill_block_tables = self._block_tables(batch.prefills)
        return (
            self._upload(token_ids, torch.long),
            self._upload(positions, torch.long),
            context,
            self._upload(logits_rows, torch.long),
        )

    def _block_tables(self, entries: list[ScheduledSequence]) -> torch.Tensor:
        width = max(len(e.seq.block_table) for e in entries)
        rows = [e.seq.block_table + [-1] * (width - len(e.seq.block_table)) for e in entries]
        return self._upload(rows, torch.int32)

    def _int32(self, values: list[int]) -> torch.Tensor:
        return self._upload(values, torch.int32)

    def _upload(self, values: list, dtype: torch.dtype) -> torch.Tensor:
        """A step's host-built index tensor on the model's device. On a GPU it goes through pinned
        memory without waiting: a pageable copy would synchronize the stream, once per tensor, and the
        step's one synchronization is the sampler's."""
        host = torch.tensor(values, dtype=dtype)
        if self.device.type != "cuda":
            return host
        return host.pin_memory().to(self.device, non_blocking=True)
