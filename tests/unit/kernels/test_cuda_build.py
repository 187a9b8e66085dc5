"""nvcc compiles every kernel source for sm_80 and sm_90 with warnings as errors, without spills."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from mili.kernels import cuda_build
from mili.kernels import cuda_checks as checks
from mili_testing import require_binary

ARCHS = ("sm_80", "sm_90")
DTYPES = ("f32", "f16", "bf16")
HEAD_DIMS = (64, 128)
EXPECTED_KERNELS = {
    "elementwise": {
        f"{op}_{dtype}"
        for op in (
            "rms_norm",
            "fused_add_rms_norm",
            "silu_and_mul",
            "rotary_embedding",
            "qk_norm_rotary",
            "store_kv",
        )
        for dtype in DTYPES
    },
    "decode_attention": {
        f"decode_attention_{dtype}_d{d}_h{h}" for dtype in DTYPES for d in HEAD_DIMS for h in (1, 2, 4, 8)
    }
    | {f"decode_reduce_{dtype}" for dtype in DTYPES},
    "prefill_attention": {f"prefill_attention_{dtype}_d{d}" for dtype in ("f16", "bf16") for d in HEAD_DIMS},
}


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """Every source for every arch, compiled once per session into a fresh cache."""
    require_binary("nvcc")
    out = tmp_path_factory.mktemp("cubins")
    return cuda_build.compile_all(ARCHS, out)


def test_every_source_compiles_for_each_arch(built: dict[tuple[str, str], Path]) -> None:
    assert {stem for stem, _ in built} == set(EXPECTED_KERNELS)
    for (stem, arch), cubin in built.items():
        assert cubin.stat().st_size > 0, (stem, arch)
        assert cubin.name.startswith(f"{stem}-{arch}-")


def cubin_source(stem: str) -> Path:
    return cuda_build.SOURCE_DIR / f"{stem}.cu"


@pytest.mark.parametrize("arch", ARCHS)
def test_cubins_export_every_kernel_the_backend_launches(
    built: dict[tuple[str, str], Path], arch: str
) -> None:
    for stem, names in EXPECTED_KERNELS.items():
        report = cuda_build.parse_ptxas_report(cuda_build.report_path(built[stem, arch]).read_text())
        assert names <= set(report), sorted(names - set(report))


@pytest.mark.parametrize("arch", ARCHS)
def test_kernels_do_not_spill_registers(built: dict[tuple[str, str], Path], arch: str) -> None:
    for stem in EXPECTED_KERNELS:
        report = cuda_build.parse_ptxas_report(cuda_build.report_path(built[stem, arch]).read_text())
        spilling = {
            r.name: (r.spill_stores, r.spill_loads)
            for r in report.values()
            if r.spill_stores or r.spill_loads
        }
        assert not spilling, f"{stem} for {arch} spills registers: {spilling}"


def test_prefill_fits_static_shared_memory(built: dict[tuple[str, str], Path]) -> None:
    report = cuda_build.parse_ptxas_report(
        cuda_build.report_path(built["prefill_attention", "sm_90"]).read_text()
    )
    assert max(r.shared_bytes for r in report.values()) <= 48 * 1024


def test_second_build_reuses_the_cache(built: dict[tuple[str, str], Path]) -> None:
    cubin = built["elementwise", "sm_90"]
    before = cubin.stat().st_mtime_ns
    again = cuda_build.compile_cubin(cubin_source("elementwise"), "sm_90", cubin.parent)
    assert again == cubin and again.stat().st_mtime_ns == before


def test_warnings_fail_the_build(tmp_path: Path) -> None:
    nvcc = require_binary("nvcc")
    source = tmp_path / "warn.cu"
    source.write_text("__global__ void k(int* p) { int unused = 3; p[0] = 1; }\n")
    command = [
        nvcc,
        "-cubin",
        "-arch=sm_80",
        *cuda_build.NVCC_FLAGS,
        "-o",
        str(tmp_path / "w.cubin"),
        str(source),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode != 0
    assert "unused" in result.stderr


def test_parse_ptxas_report_reads_spills_and_resources() -> None:
    text = """ptxas info    : Compiling entry function 'a' for 'sm_90'
ptxas info    : Function properties for a
    16 bytes stack frame, 24 bytes spill stores, 16 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 4112 bytes smem
ptxas info    : Function properties for b
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 255 registers, used 0 barriers
"""
    report = cuda_build.parse_ptxas_report(text)
    assert report["a"] == cuda_build.KernelResources("a", 40, 24, 16, 4112)
    assert report["b"] == cuda_build.KernelResources("b", 255, 0, 0, 0)


def test_bad_arch_is_refused() -> None:
    with pytest.raises(ValueError, match="sm_80"):
        cuda_build.check_arch("compute_80")


def test_precompile_cli_writes_cubins(
    built: dict[tuple[str, str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = built["elementwise", "sm_80"].parent  # already compiled: the CLI finds every cubin cached
    assert cuda_build.main(["--arch", "sm_80", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "prefill_attention sm_80" in printed and "spills" not in printed


def test_missing_nvcc_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MILI_NVCC", "")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    monkeypatch.setenv("MILI_CACHE_DIR", str(tmp_path))
    with pytest.raises(cuda_build.KernelBuildError, match="MILI_NVCC"):
        cuda_build.find_cubins("sm_90")


# `extern "C" __global__ void __launch_bounds__(...) NAME_##SUFFIX...(PARAMETERS)` in an export macro
EXPORT = re.compile(
    r'extern "C" __global__ void __launch_bounds__\([^)]*\)\s*(\w+?)_##SUFFIX[\w#]*\(([^)]*)\)'
)
SCALAR_CODES = {"int64_t": "q", "int": "i", "float": "f"}


def struct_code(parameter: str) -> str:
    """PyCUDA's struct code for one C parameter declaration: ``const T* q`` -> P, ``int64_t n`` -> q."""
    if "*" in parameter:
        return "P"
    return SCALAR_CODES[parameter.split()[-2]]


def c_signatures() -> dict[str, tuple[str, str]]:
    """Every exported kernel family in kernels/cuda/*.cu: name -> (struct codes, source stem)."""
    found = {}
    for source in cuda_build.SOURCE_DIR.glob("*.cu"):
        text = source.read_text().replace("\\\n", " ")
        for name, parameters in EXPORT.findall(text):
            codes = "".join(struct_code(p.strip()) for p in parameters.split(","))
            found[name] = (codes, source.stem)
    return found


def test_launcher_signatures_match_the_c_declarations() -> None:
    # The struct codes are the only copy of each signature on the Python side: they must say what C says.
    declared = c_signatures()
    launched = {name: (codes, checks.SOURCE_OF[name]) for name, codes in checks.SIGNATURES.items()}
    assert declared == launched
