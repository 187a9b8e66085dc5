"""Compile kernels/cuda/*.cu to cubins with nvcc, one per GPU architecture, cached by source hash.

Needs only nvcc (no GPU, no pycuda). A cubin is named ``<stem>-<arch>-<key>.cubin`` where ``key``
hashes the kernel sources (every .cu and .cuh), the nvcc version and the flags, so a changed source
or compiler never reuses a stale binary. Next to each cubin, ``.ptxas.txt`` keeps nvcc's resource
report (registers, spills, shared memory), which the tests read.

Cache directory: ``$MILI_CACHE_DIR/kernels`` (default ``~/.cache/mili/kernels``). Images precompile:

    python -m mili.kernels.cuda_build --arch sm_80 --arch sm_90 [--out DIR]
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent / "cuda"
DEFAULT_ARCHS = ("sm_80", "sm_90")
# Warnings are errors, in the front end and in ptxas; -v makes ptxas report resources per kernel.
NVCC_FLAGS = ("-O3", "-std=c++17", "-lineinfo", "-Werror", "all-warnings", "-Xptxas", "-v,-Werror")


class KernelBuildError(RuntimeError):
    """nvcc is missing or rejected a source."""


@dataclass(frozen=True)
class KernelResources:
    """ptxas's report for one kernel entry point."""

    name: str
    registers: int
    spill_stores: int
    spill_loads: int
    shared_bytes: int


def kernel_sources() -> list[Path]:
    """The .cu files that make up the kernels, in a stable order."""
    return sorted(SOURCE_DIR.glob("*.cu"))


def cache_dir() -> Path:
    """Where cubins are kept: ``$MILI_CACHE_DIR/kernels``, default ``~/.cache/mili/kernels``."""
    root = os.environ.get("MILI_CACHE_DIR") or Path.home() / ".cache" / "mili"
    return Path(root) / "kernels"


def image_cache_dirs() -> list[Path]:
    """Cubins precompiled into an image: ``$MILI_IMAGE_CACHE_DIR/kernels`` when that is set."""
    baked = os.environ.get("MILI_IMAGE_CACHE_DIR")
    return [Path(baked) / "kernels"] if baked else []


def find_nvcc() -> str:
    """nvcc from ``$MILI_NVCC``, PATH, or ``$CUDA_HOME/bin``; KernelBuildError when there is none."""
    candidates = [
        os.environ.get("MILI_NVCC"),
        shutil.which("nvcc"),
        str(Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "nvcc"),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise KernelBuildError(
        "nvcc not found (set MILI_NVCC or put CUDA's bin on PATH), and no cached cubin matches; "
        f"precompile with `python -m mili.kernels.cuda_build` into {cache_dir()}"
    )


@functools.cache
def nvcc_version(nvcc: str) -> str:
    """The last line of ``nvcc --version`` (names the exact build)."""
    result = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True)
    return result.stdout.strip().splitlines()[-1]


def source_key(nvcc_id: str) -> str:
    """Hash of every kernel source and header, the compiler identity and the flags."""
    digest = hashlib.sha256()
    for path in sorted([*SOURCE_DIR.glob("*.cu"), *SOURCE_DIR.glob("*.cuh")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(nvcc_id.encode() + b"\0" + " ".join(NVCC_FLAGS).encode())
    return digest.hexdigest()[:16]


def cubin_name(source: Path, arch: str, key: str) -> str:
    return f"{source.stem}-{arch}-{key}.cubin"


def check_arch(arch: str) -> str:
    if not re.fullmatch(r"sm_\d{2,3}a?", arch):
        raise ValueError(f"arch must look like sm_80 or sm_90a, got {arch!r}")
    return arch


def compile_cubin(source: Path, arch: str, out_dir: Path | None = None) -> Path:
    """Compile ``source`` for ``arch`` unless a cubin for the same key is cached; return its path."""
    check_arch(arch)
    nvcc = find_nvcc()
    out_dir = Path(out_dir) if out_dir is not None else cache_dir()
    target = out_dir / cubin_name(source, arch, source_key(nvcc_version(nvcc)))
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".build-") as tmp:
        tmp_cubin = Path(tmp) / target.name
        command = [
            nvcc,
            "-cubin",
            f"-arch={arch}",
            *NVCC_FLAGS,
            f"-I{SOURCE_DIR}",
            "-o",
            str(tmp_cubin),
            str(source),
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise KernelBuildError(f"nvcc failed on {source.name} for {arch}:\n{result.stderr.strip()}")
        # Write the report first: a cubin that exists always has its report beside it.
        report = Path(tmp) / "report"
        report.write_text(result.stderr)
        os.replace(report, report_path(target))
        os.replace(tmp_cubin, target)  # atomic: concurrent builders never see half a file
    return target


def report_path(cubin: Path) -> Path:
    return cubin.with_suffix(".ptxas.txt")


def compile_all(
    archs: Iterable[str], out_dir: Path | None = None, jobs: int | None = None
) -> dict[tuple[str, str], Path]:
    """Compile every source for every arch in parallel; ``{(stem, arch): cubin}``."""
    pairs = [(source, check_arch(arch)) for arch in archs for source in kernel_sources()]
    workers = jobs or min(len(pairs), os.cpu_count() or 1) or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        paths = list(pool.map(lambda pair: compile_cubin(pair[0], pair[1], out_dir), pairs))
    return {(source.stem, arch): path for (source, arch), path in zip(pairs, paths, strict=True)}


def find_cubins(arch: str, search_dirs: Sequence[Path] = ()) -> dict[str, Path]:
    """Cubins for ``arch`` for every source: compiled (or found) in the cache, else prebuilt ones in
    ``search_dirs`` with the current key. Raises KernelBuildError when neither works."""
    try:
        return {source.stem: compile_cubin(source, arch) for source in kernel_sources()}
    except KernelBuildError as exc:
        build_error = exc
    # No nvcc: accept any prebuilt cubin of the same sources for this arch (the key also covers the
    # compiler, which we cannot ask; the sources must match, which the name alone cannot show, so the
    # newest cubin per source wins).
    found: dict[str, Path] = {}
    for source in kernel_sources():
        for directory in [cache_dir(), *image_cache_dirs(), *search_dirs]:
            matches = sorted(
                Path(directory).glob(f"{source.stem}-{arch}-*.cubin"), key=lambda p: p.stat().st_mtime
            )
            if matches:
                found[source.stem] = matches[-1]
                break
        else:
            raise build_error
    return found


def parse_ptxas_report(text: str) -> dict[str, KernelResources]:
    """Per-kernel registers, spills and shared memory from ``nvcc -Xptxas -v`` output."""
    kernels: dict[str, KernelResources] = {}
    current: str | None = None
    spills = (0, 0)
    for line in text.splitlines():
        if match := re.search(r"Function properties for (\S+)", line):
            current, spills = match.group(1), (0, 0)
        elif current and (match := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)):
            spills = (int(match.group(1)), int(match.group(2)))
        elif current and (match := re.search(r"Used (\d+) registers", line)):
            smem = re.search(r"(\d+) bytes smem", line)
            kernels[current] = KernelResources(
                name=current,
                registers=int(match.group(1)),
                spill_stores=spills[0],
                spill_loads=spills[1],
                shared_bytes=int(smem.group(1)) if smem else 0,
            )
            current = None
    return kernels


def arch_for_capability(capability: tuple[int, int]) -> str:
    """``(9, 0)`` → ``sm_90``."""
    major, minor = capability
    return f"sm_{major}{minor}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", action="append", help="sm_XX; repeat for several (default sm_80, sm_90)")
    parser.add_argument("--out", type=Path, default=None, help=f"cubin directory (default {cache_dir()})")
    parser.add_argument("--jobs", type=int, default=None, help="parallel nvcc processes")
    args = parser.parse_args(argv)
    try:
        built = compile_all(args.arch or DEFAULT_ARCHS, args.out, args.jobs)
    except (KernelBuildError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for (stem, arch), path in sorted(built.items()):
        resources = parse_ptxas_report(report_path(path).read_text())
        spilling = [r.name for r in resources.values() if r.spill_stores or r.spill_loads]
        note = f", spills in {', '.join(spilling)}" if spilling else ""
        print(f"{stem} {arch}: {len(resources)} kernels -> {path}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
