"""The host CPU's feature flags, as /proc/cpuinfo lists them (x86 ``flags``, Arm ``Features``)."""

from __future__ import annotations

import functools
from pathlib import Path


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of the first processor in a /proc/cpuinfo text."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@functools.cache
def host_cpu_flags() -> frozenset[str]:
    """This machine's flags; empty where /proc/cpuinfo cannot be read."""
    try:
        return cpu_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return frozenset()
