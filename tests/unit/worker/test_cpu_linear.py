"""Prepacked linears give F.linear's results bit for bit, and the loader packs only where it pays."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mili.worker.models.cpu_linear import PrepackedLinear, packing_available, prepack_linears

CPU = torch.device("cpu")
needs_packing = pytest.mark.skipif(
    not packing_available(torch.bfloat16, CPU), reason="this CPU/torch has no oneDNN bf16 prepacking"
)


@needs_packing
@pytest.mark.parametrize("rows", [1, 7, 64, 300])
@pytest.mark.parametrize("bias", [False, True])
def test_prepacked_linear_equals_f_linear(rows, bias):
    linear = nn.Linear(96, 160, bias=bias).to(torch.bfloat16)
    x = torch.randn(rows, 96).to(torch.bfloat16)
    with torch.inference_mode():
        expected = F.linear(x, linear.weight, linear.bias)
        assert torch.equal(PrepackedLinear(linear)(x), expected)


@needs_packing
def test_every_linear_is_replaced_and_others_kept():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Sequential(nn.Linear(16, 4, bias=False)))
    model = model.to(torch.bfloat16)
    x = torch.randn(3, 8).to(torch.bfloat16)
    with torch.inference_mode():
        expected = model(x)
        assert prepack_linears(model) == 2
        assert isinstance(model[0], PrepackedLinear) and isinstance(model[2][0], PrepackedLinear)
        assert isinstance(model[1], nn.ReLU)
        assert torch.equal(model(x), expected)


def test_packing_is_for_cpu_bf16_only():
    assert not packing_available(torch.float32, CPU)
    assert not packing_available(torch.bfloat16, torch.device("meta"))
