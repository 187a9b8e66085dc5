"""What the host CPU offers the engine: native bfloat16 matmuls, and how many threads it should run: one
per physical core it may use, no more than its container's CPU limit."""

from __future__ import annotations

import functools
import math
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


def cgroup_cpu_limit(
    cgroup_root: Path = Path("/sys/fs/cgroup"), self_cgroup: Path = Path("/proc/self/cgroup")
) -> float | None:
    """CPUs the process's cgroup may use by its CFS quota (a pod's ``limits.cpu``): cgroup v2
    ``cpu.max`` or v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``; None when unlimited or unreadable.

    A container sees every CPU of its node in its affinity mask, so without this a pod limited to 2
    CPUs on a 64-core node would start 64 threads and spend its quota throttled."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        relative = path.lstrip("/")
        if controllers == "":  # cgroup v2
            candidates = [(_cpu_max, cgroup_root / relative), (_cpu_max, cgroup_root)]
        elif "cpu" in controllers.split(","):
            mounts = (cgroup_root / controllers, cgroup_root / "cpu")
            candidates = [
                (_cfs_quota, directory) for mount in mounts for directory in (mount / relative, mount)
            ]
        else:
            continue
        for read, directory in candidates:
            try:
                return read(directory)
            except (OSError, ValueError):  # not this directory
                continue
    return None


def _cpu_max(directory: Path) -> float | None:
    """cgroup v2 ``cpu.max`` ("max 100000" or "200000 100000") as CPUs."""
    quota, period = (directory / "cpu.max").read_text().split()[:2]
    return None if quota == "max" else int(quota) / int(period)


def _cfs_quota(directory: Path) -> float | None:
    """cgroup v1 ``cpu.cfs_quota_us`` (-1: unlimited) over ``cpu.cfs_period_us``, as CPUs."""
    quota = int((directory / "cpu.cfs_quota_us").read_text())
    period = int((directory / "cpu.cfs_period_us").read_text())
    return None if quota < 0 else quota / period


def engine_threads() -> int:
    """Threads for the CPU engine: one per physical core it may run on, capped by the CPU limit
    (rounded down: a thread over the quota is throttled mid-step, and every other waits for it)."""
    cores = physical_cores()
    limit = cgroup_cpu_limit()
    return cores if limit is None else max(1, min(cores, math.floor(limit)))
