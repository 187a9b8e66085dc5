"""Resource quantities compare by value, as the API server canonicalizes them."""

from __future__ import annotations

from decimal import Decimal

import pytest

from mili.operator.quantity import format_bytes, parse_quantity, same_quantity


@pytest.mark.parametrize(
    ("a", "b"),
    [("1000m", "1"), ("1024Mi", "1Gi"), ("0.5", "500m"), (2, "2"), ("1e3", "1k"), ("1.5Gi", "1536Mi")],
)
def test_equal_quantities(a, b):
    assert same_quantity(a, b)


@pytest.mark.parametrize(("a", "b"), [("1", "1Mi"), ("1G", "1Gi"), ("lots", "lots"), (None, None), (True, 1)])
def test_different_or_invalid_quantities(a, b):
    assert not same_quantity(a, b)


def test_parse_and_format():
    assert parse_quantity("500m") == Decimal("0.5") and parse_quantity("bad") is None
    assert format_bytes(parse_quantity("22Gi")) == "22Gi" and format_bytes(Decimal(1536 * 2**20)) == "1536Mi"
