"""The C++ CPU kernels agree with their torch reference on fresh random inputs, in every dtype, in every
instruction-set build this host runs."""

from __future__ import annotations

import pytest
import torch

from mili.kernels import TorchBackend, select_backend
from mili.kernels.cpu_backend import CpuBackend
from mili.kernels.cpu_build import host_levels, preferred_level

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Both sides compute in float32 and round once; they differ only in summation order.
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}


@pytest.fixture(scope="module", params=host_levels(), ids=lambda level: level.name)
def cpu(request, cpu_kernels_built):
    return CpuBackend(request.param)


reference = TorchBackend()


def close(ours: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    assert ours.dtype == expected.dtype and ours.shape == expected.shape
    diff = (ours.float() - expected.float()).abs().max().item()
    assert diff <= TOLERANCE[dtype] * max(1.0, expected.float().abs().max().item()), diff


def paged_cache(num_blocks: int, block_size: int, kv_heads: int, head_dim: int, dtype: torch.dtype):
    shape = (num_blocks, block_size, kv_heads, head_dim)
    return torch.randn(shape).to(dtype), torch.randn(shape).to(dtype)


def test_selected_by_name_and_by_auto_on_cpu(cpu_kernels_built):
    for choice in ("cpu", "auto"):
        chosen = select_backend(choice, torch.device("cpu"))
        assert chosen.name == "cpu" and chosen.level == preferred_level()


def test_the_libraries_load_where_there_is_no_compiler(cpu_kernels_built, monkeypatch):
    from mili.kernels import cpu_build

    def no_compiler() -> str:
        raise cpu_build.CpuKernelBuildError("no C++ compiler found")

    monkeypatch.setattr(cpu_build, "find_compiler", no_compiler)
    for level in host_levels():
        assert cpu_build.cached_library(level) in cpu_kernels_built


def test_a_build_without_sources_is_refused(tmp_path, monkeypatch):
    from mili.kernels import cpu_build

    monkeypatch.setattr(cpu_build, "SOURCE_DIR", tmp_path)
    with pytest.raises(cpu_build.CpuKernelBuildError, match="no C\\+\\+ kernel sources"):
        cpu_build.build(tmp_path / "out")


def test_an_isa_level_the_host_lacks_is_refused(cpu_kernels_built, monkeypatch):
    monkeypatch.setenv("MILI_CPU_ISA", "avx1024")
    with pytest.raises(RuntimeError, match="not a level this CPU runs"):
        select_backend("cpu", torch.device("cpu"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("residual", [False, True])
def test_rms_norm(cpu, dtype, residual):
    x = torch.randn(7, 96).to(dtype)
    weight = (torch.rand(96) + 0.5).to(dtype)
    res = torch.randn(7, 96).to(dtype) if residual else None
    out, new_res = cpu.rms_norm(x, weight, 1e-6, res)
    expected, expected_res = reference.rms_norm(x, weight, 1e-6, res)
    close(out, expected, dtype)
    if residual:
        close(new_res, expected_res, dtype)
    else:
        assert new_res is None


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_add_rms_norm_updates_the_residual_in_place(cpu, dtype):
    x, res = torch.randn(7, 96).to(dtype), torch.randn(7, 96).to(dtype)
    weight = (torch.rand(96) + 0.5).to(dtype)
    res_ref = res.clone()
    out = cpu.fused_add_rms_norm(x, res, weight, 1e-6)
    close(out, reference.fused_add_rms_norm(x, res_ref, weight, 1e-6), dtype)
    close(res, res_ref, dtype)


@pytest.mark.parametrize("qk_norm", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_qk_norm_rotary_on_strided_views(cpu, dtype, qk_norm):
    head_dim, positions = 64, torch.tensor([0, 5, 17, 3])
    cos_sin = torch.randn(32, head_dim)
    qkv = torch.randn(4, (4 + 2 + 2) * head_dim).to(dtype)
    q = qkv[:, : 4 * head_dim].view(4, 4, head_dim)
    k = qkv[:, 4 * head_dim : 6 * head_dim].view(4, 2, head_dim)
    weights = [(torch.rand(head_dim) + 0.5).to(dtype) for _ in range(2)] if qk_norm else [None, None]
    before = qkv.clone()
    q_out, k_out = cpu.qk_norm_rotary(positions, q, k, *weights, 1e-6, cos_sin)
    q_ref, k_ref = reference.qk_norm_rotary(positions, q, k, *weights, 1e-6, cos_sin)
    assert torch.equal(qkv, before) and q_out.is_contiguous() and k_out.is_contiguous()
    close(q_out, q_ref, dtype)
    close(k_out, k_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul(cpu, dtype):
    x = torch.randn(5, 2 * 80).to(dtype)
    close(cpu.silu_and_mul(x), reference.silu_and_mul(x), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_embedding_on_strided_views(cpu, dtype):
    head_dim, positions = 64, torch.tensor([0, 5, 17, 3])
    cos_sin = torch.randn(32, head_dim)
    qkv = torch.randn(4, (4 + 2 + 2) * head_dim).to(dtype)
    q = qkv[:, : 4 * head_dim].view(4, 4, head_dim)  # a view of the fused projection, as in the model
    k = qkv[:, 4 * head_dim : 6 * head_dim].view(4, 2, head_dim)
    q_ref, k_ref = q.clone(), k.clone()
    cpu.rotary_embedding(positions, q, k, cos_sin)
    reference.rotary_embedding(positions, q_ref, k_ref, cos_sin)
    close(q, q_ref, dtype)
    close(k, k_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_store_kv_skips_padding_slots(cpu, dtype):
    k_cache, v_cache = paged_cache(6, 4, 2, 32, dtype)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    k, v = torch.randn(5, 2, 32).to(dtype), torch.randn(5, 2, 32).to(dtype)
    slots = torch.tensor([3, -1, 22, 9, 0])
    cpu.store_kv(k, v, k_cache, v_cache, slots)
    reference.store_kv(k, v, k_ref, v_ref, slots)
    assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)


def test_store_kv_refuses_a_slot_outside_the_cache(cpu):
    k_cache, v_cache = paged_cache(2, 4, 1, 8, torch.float32)
    k = torch.randn(1, 1, 8)
    with pytest.raises(RuntimeError, match="outside the cache"):
        cpu.store_kv(k, k, k_cache, v_cache, torch.tensor([8]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("heads", "kv_heads", "head_dim"), [(9, 3, 64), (4, 4, 32), (8, 2, 128), (4, 2, 24)])
def test_decode_attention_over_uneven_contexts(cpu, dtype, heads, kv_heads, head_dim):
    block_size, num_blocks = 16, 40
    k_cache, v_cache = paged_cache(num_blocks, block_size, kv_heads, head_dim, dtype)
    lens = [1, 17, 160, 33]
    tables = torch.full((4, 10), -1, dtype=torch.int32)
    order = torch.randperm(num_blocks).tolist()  # scattered blocks
    for i, length in enumerate(lens):
        needed = -(-length // block_size)
        tables[i, :needed] = torch.tensor(order[:needed], dtype=torch.int32)
        order = order[needed:]
    context_lens = torch.tensor(lens, dtype=torch.int32)
    q = torch.randn(4, heads, head_dim).to(dtype)
    scale = head_dim**-0.5
    ours = cpu.decode_attention(q, k_cache, v_cache, tables, context_lens, scale)
    expected = reference.decode_attention(q, k_cache, v_cache, tables, context_lens, scale)
    close(ours, expected, dtype)


def test_decode_attention_names_a_dtype_mismatch(cpu):
    k_cache, v_cache = paged_cache(2, 16, 1, 32, torch.bfloat16)
    q = torch.randn(1, 1, 32)
    one = torch.tensor([1], dtype=torch.int32)
    with pytest.raises(RuntimeError, match="share a dtype"):
        cpu.decode_attention(q, k_cache, v_cache, torch.zeros(1, 1, dtype=torch.int32), one, 1.0)
