"""Compile kernels/cpu/*.cpp into shared libraries of torch ops, one per instruction-set level, cached.

Plain g++ against torch's headers and libraries (no ninja, no pybind): each library registers its ops
with ``TORCH_LIBRARY`` under its own namespace (``torch.ops.mili_cpu_<level>.*``) and is loaded with
``torch.ops.load_library``. The same sources are built once per `IsaLevel` of the machine's
architecture (on x86-64: AVX512-BF16, AVX-512, AVX2+FMA and the baseline), so one cache or image
serves any CPU of the architecture, and the engine loads the best level the host runs
(``$MILI_CPU_ISA`` names a lower one). A library is named ``mili_cpu_ops-<level>-<key>.so``, where
``key`` hashes the sources, the flags and the torch version: a changed source or torch never reuses a
stale binary. The compiler is not in the key, so that a library loads where no compiler is (the worker
image builds them in a stage with g++ and runs them in one without).

`make venv` builds them right after installing (``python -I -m mili.kernels.cpu_build``) and fails with
a clear message when there is no C++ compiler; at run time `--kernels auto` uses them when present and
falls back to the torch ops otherwise. Cache directory: ``$MILI_CACHE_DIR/kernels``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mili.kernels.cpu_features import host_cpu_flags
from mili.kernels.cuda_build import cache_dir

SOURCE_DIR = Path(__file__).resolve().parent / "cpu"
# Each level sets the vector ISA and the matching CPU_CAPABILITY of ATen's Vectorized (ATen/cpu/vec).
CXX_FLAGS = ("-O3", "-std=c++20", "-shared", "-fPIC", "-fopenmp", "-Wall", "-Werror", "-Wno-unknown-pragmas")
ISA_ENV = "MILI_CPU_ISA"


@dataclass(frozen=True)
class IsaLevel:
    """One build of the kernels: the host CPU flags it needs and the compiler flags it is built with."""

    name: str
    needs: frozenset[str]
    flags: tuple[str, ...]

    @property
    def namespace(self) -> str:
        """Its torch op namespace: ``torch.ops.<namespace>``."""
        return f"mili_cpu_{self.name}"


# Best first. x86-64-v4 is AVX-512 F/BW/CD/DQ/VL; v3 is AVX2, FMA, F16C, BMI1/2, LZCNT and MOVBE.
X86_64_V4 = frozenset(
    {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx2", "fma", "f16c", "bmi2"}
)
AVX512 = ("-march=x86-64-v4", "-mtune=sapphirerapids", "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512")
GENERIC = IsaLevel("generic", frozenset(), ("-DCPU_CAPABILITY=DEFAULT",))  # any CPU, any architecture
X86_64_LEVELS = (
    # AVX512-BF16 (Cooper Lake, Sapphire Rapids and later, Zen 4): bf16 dot products and conversions
    IsaLevel("avx512bf16", X86_64_V4 | {"avx512_bf16"}, (*AVX512, "-mavx512bf16")),
    IsaLevel("avx512", X86_64_V4, AVX512),
    IsaLevel(
        "avx2",
        frozenset({"avx2", "fma", "f16c", "bmi1", "bmi2", "movbe", "abm"}),
        ("-march=x86-64-v3", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"),
    ),
    GENERIC,
)


def architecture_levels(machine: str | None = None) -> tuple[IsaLevel, ...]:
    """Every level built for this architecture (``platform.machine()``), best first."""
    machine = machine or platform.machine()
    return X86_64_LEVELS if machine in ("x86_64", "AMD64") else (GENERIC,)


def host_levels(flags: frozenset[str] | None = None, machine: str | None = None) -> list[IsaLevel]:
    """The levels this host can run, best first (``flags``: its /proc/cpuinfo flags)."""
    if flags is None:
        flags = host_cpu_flags()
    return [level for level in architecture_levels(machine) if level.needs <= flags]


def preferred_level(levels: list[IsaLevel] | None = None) -> IsaLevel:
    """The best level the host runs, or the one ``$MILI_CPU_ISA`` names (which the host must run)."""
    levels = host_levels() if levels is None else levels
    wanted = os.environ.get(ISA_ENV)
    if not wanted:
        return levels[0]
    for level in levels:
        if level.name == wanted:
            return level
    names = ", ".join(level.name for level in levels)
    raise CpuKernelBuildError(f"${ISA_ENV}={wanted!r} is not a level this CPU runs (it runs: {names})")


class CpuKernelBuildError(RuntimeError):
    """No C++ compiler, or it rejected a source."""


def kernel_sources() -> list[Path]:
    return sorted(SOURCE_DIR.glob("*.cpp"))


def find_compiler() -> str:
    """``$CXX``, else ``g++``/``c++`` on PATH; raises a message saying what to install."""
    for candidate in (os.environ.get("CXX"), "g++", "c++"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)  # type: ignore[return-value]
    raise CpuKernelBuildError(
        "no C++ compiler found for MILI's CPU kernels: install g++ (apt-get install g++) or set $CXX; "
        "without them the engine uses the slower torch ops (--kernels torch)"
    )


def torch_flags() -> list[str]:
    from torch.utils import cpp_extension

    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    flags = [f"-D_GLIBCXX_USE_CXX11_ABI={abi}"]
    flags += [f"-isystem{path}" for path in cpp_extension.include_paths()]  # their warnings are not ours
    for path in cpp_extension.library_paths():
        flags += [f"-L{path}", f"-Wl,-rpath,{path}"]
    return [*flags, "-lc10", "-ltorch_cpu", "-ltorch"]


def library_name(level: IsaLevel) -> str:
    """``mili_cpu_ops-<level>-<key>.so``, the key hashing the sources, the flags and torch's version. Not
    the compiler: the worker image loads its libraries where there is none."""
    digest = hashlib.sha256()
    for source in kernel_sources():
        digest.update(source.name.encode() + source.read_bytes())
    digest.update(" ".join((*CXX_FLAGS, *level.flags)).encode())
    digest.update(torch.__version__.encode())
    return f"mili_cpu_ops-{level.name}-{digest.hexdigest()[:16]}.so"


def cached_library(level: IsaLevel) -> Path | None:
    """The built library of ``level`` for these sources and this torch, if it is in the cache."""
    path = cache_dir() / library_name(level)
    return path if path.exists() else None


def build(out_dir: Path | None = None, levels: Sequence[IsaLevel] | None = None) -> list[Path]:
    """Compile (or reuse) one library per level (default: every level of this architecture); returns
    their paths. Raises `CpuKernelBuildError` with the reason."""
    if not kernel_sources():  # an install without its package data: g++ would link an empty library
        raise CpuKernelBuildError(f"no C++ kernel sources in {SOURCE_DIR}")
    compiler = find_compiler()
    out_dir = out_dir or cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    return [build_level(compiler, level, out_dir) for level in levels or architecture_levels()]


def build_level(compiler: str, level: IsaLevel, out_dir: Path) -> Path:
    """``level``'s library in ``out_dir``, compiled unless it is there already."""
    target = out_dir / library_name(level)
    if target.exists():
        return target
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        partial = Path(tmp) / target.name
        command = [
            compiler, *CXX_FLAGS, *level.flags, f"-DMILI_CPU_NAMESPACE={level.namespace}",
            *map(str, kernel_sources()), "-o", str(partial), *torch_flags(),
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise CpuKernelBuildError(
                f"{compiler} failed on kernels/cpu ({level.name}):\n{result.stderr[-4000:]}"
            )
        partial.replace(target)  # atomic: concurrent builders never load a half-written library
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build MILI's CPU kernels (torch ops) into the cache.")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: the cache)")
    args = parser.parse_args(argv)
    try:
        paths = build(args.out)
    except CpuKernelBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
