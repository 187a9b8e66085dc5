"""The engine's one flat configuration, validated at construction."""

from __future__ import annotations

from dataclasses import dataclass

from mili.kernels import KERNEL_CHOICES
from mili.worker.model_source import DEFAULT_MODEL

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
DEVICE_CHOICES = ("auto", "cpu", "cuda")


@dataclass
class EngineConfig:
    """Everything the engine needs; every component takes the whole config and reads its fields."""

    model: str = DEFAULT_MODEL
    served_name: str | None = None
    dtype: str = "auto"  # auto = checkpoint dtype on GPU; on CPU bfloat16 with AMX/AVX512-BF16, else float32
    device: str = "auto"
    max_model_len: int | None = None  # None = the model's limit, capped by what the KV pool holds
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    gpu_memory_utilization: float = 0.9
    cpu_kv_cache_bytes: int = 512 * 2**20  # KV pool size on CPU
    num_kv_blocks: int | None = None  # fixes the pool size, overriding the memory-based sizing
    prefix_caching: bool = True
    kernels: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_CHOICES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {self.dtype!r}")
        if self.device not in DEVICE_CHOICES:
            raise ValueError(f"device must be one of {', '.join(DEVICE_CHOICES)}, got {self.device!r}")
        if self.kernels not in KERNEL_CHOICES:
            raise ValueError(f"kernels must be one of {', '.join(KERNEL_CHOICES)}, got {self.kernels!r}")
        if self.block_size not in (8, 16, 32, 64, 128):
            raise ValueError(f"block_size must be one of 8, 16, 32, 64, 128, got {self.block_size}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be at least 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be at least 1, got {self.max_num_batched_tokens}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"max_model_len must be at least 1, got {self.max_model_len}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ValueError(f"num_kv_blocks must be at least 1, got {self.num_kv_blocks}")
        if self.cpu_kv_cache_bytes < 1:
            raise ValueError(f"cpu_kv_cache_bytes must be positive, got {self.cpu_kv_cache_bytes}")
