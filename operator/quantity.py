"""Kubernetes resource quantities ("500m", "1", "16Gi", "1e3") as exact numbers.

The API server stores quantities in canonical form ("1000m" comes back as "1", "1024Mi" as "1Gi"), so
comparing them as strings would see drift where there is none.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_SUFFIXES = {
    "": 1,
    "m": Decimal("0.001"),
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


def parse_quantity(value: str | int | float) -> Decimal | None:
    """The exact value of a quantity, or None when ``value`` is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return Decimal(str(value))
    match = _QUANTITY.match(value) if isinstance(value, str) else None
    if match is None:
        return None
    try:
        number = Decimal(match.group(1))
    except InvalidOperation:
        return None
    return number * _SUFFIXES[match.group(2) or ""]


def same_quantity(a: object, b: object) -> bool:
    """Whether ``a`` and ``b`` are the same quantity (``"1000m"`` and ``"1"``, ``"1024Mi"`` and ``"1Gi"``)."""
    parsed_a = parse_quantity(a)  # type: ignore[arg-type]
    parsed_b = parse_quantity(b)  # type: ignore[arg-type]
    return parsed_a is not None and parsed_a == parsed_b


def format_bytes(value: Decimal) -> str:
    """A byte count in the largest binary unit that divides it: ``2**31`` -> ``"2Gi"``."""
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        unit = _SUFFIXES[suffix]
        if value % unit == 0 and value >= unit:
            return f"{int(value // unit)}{suffix}"
    return str(int(value))
