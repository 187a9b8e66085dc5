"""The engine's one flat configuration, validated at construction against the settings declaration."""

from __future__ import annotations

from dataclasses import dataclass

from mili.common import settings
from mili.common.settings import default

# Re-exported for the worker's modules; declared once in mili.common.settings.
DTYPE_CHOICES = settings.DTYPE_CHOICES
DEVICE_CHOICES = settings.DEVICE_CHOICES


@dataclass
class EngineConfig:
    """Everything the engine needs; every component takes the whole config and reads its fields.

    Each field is a setting of ``mili.common.settings`` (type, range and default declared there)."""

    model: str = default("model")
    served_name: str | None = default("served_name")
    dtype: str = default("dtype")  # auto = checkpoint dtype on GPU; on CPU bfloat16 or float32
    device: str = default("device")
    max_model_len: int | None = default("max_model_len")  # None = the model's, capped by the KV pool
    block_size: int = default("block_size")
    max_num_seqs: int = default("max_num_seqs")
    max_num_batched_tokens: int = default("max_num_batched_tokens")
    gpu_memory_utilization: float = default("gpu_memory_utilization")
    cpu_kv_cache_bytes: int = default("cpu_kv_cache_bytes")  # KV pool size on CPU
    cpu_threads: int | None = default("cpu_threads")  # None = one per physical core, within the CPU limit
    num_kv_blocks: int | None = default("num_kv_blocks")  # fixes the pool size, overriding the sizing
    prefix_caching: bool = default("prefix_caching")
    kernels: str = default("kernels")
    enforce_eager: bool = default("enforce_eager")  # True: no CUDA graphs (decode runs eagerly)
    seed: int = default("seed")
    kv_events_endpoint: str | None = default("kv_events_endpoint")  # ZMQ PUB address (worker/kv_events.py)
    kv_events_replay_endpoint: str | None = default("kv_events_replay_endpoint")  # ZMQ ROUTER address

    def __post_init__(self) -> None:
        settings.check_all(self, settings.engine_config_settings())
        if self.kv_events_endpoint is not None and not self.prefix_caching:
            raise ValueError("kv_events_endpoint needs prefix_caching: without it no block is ever shared")
        if self.kv_events_replay_endpoint is not None and self.kv_events_endpoint is None:
            raise ValueError("kv_events_replay_endpoint needs kv_events_endpoint: there is nothing to replay")
