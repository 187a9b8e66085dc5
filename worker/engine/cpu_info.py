"""What the host CPU offers the engine: native bfloat16 matmuls, and how many physical cores it may use."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from mili.kernels.cpu_features import host_cpu_flags

# Either gives oneDNN native bf16 dot products (AMX tiles on Sapphire Rapids and later, AVX512-BF16 on
# Cooper Lake / Zen 4); without them torch emulates bf16 and runs slower than float32.
BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


@functools.cache
def has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AMX-BF16 or AVX512-BF16)."""
    return bool(host_cpu_flags() & BF16_FLAGS)


def physical_cores(cpus: set[int] | None = None) -> int:
    """Distinct physical cores among the CPUs this process may run on (SMT siblings count once)."""
    cpus = os.sched_getaffinity(0) if cpus is None else cpus
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            return len(cpus)  # no topology exposed (some containers): one thread per visible CPU
        cores.add((package, core))
    return max(1, len(cores))
