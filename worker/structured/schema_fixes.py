"""JSON-schema rewrites that keep xgrammar's output valid JSON.

xgrammar 0.2.8 compiles a string with ``minLength``/``maxLength`` into a character class that lets
raw control characters (tab, U+001F, ...) through, which JSON forbids inside strings; clients'
JSON parsers then refuse the output. Such a string is rewritten into the equivalent ``pattern``
(a length-bounded run of characters that need no escaping), which xgrammar compiles correctly.
"""

from __future__ import annotations

from typing import Any

_PLAIN_CHAR = r'[^"\\\x00-\x1f]'
_LEAVE_ALONE = ("pattern", "format", "enum", "const")


def without_control_characters(schema: Any) -> Any:
    """A copy of ``schema`` with every length-bounded string spelled as a pattern."""
    if isinstance(schema, list):
        return [without_control_characters(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    fixed = {key: without_control_characters(value) for key, value in schema.items()}
    bounded = "minLength" in fixed or "maxLength" in fixed
    if fixed.get("type") == "string" and bounded and not any(key in fixed for key in _LEAVE_ALONE):
        low, high = fixed.pop("minLength", 0), fixed.pop("maxLength", "")
        fixed["pattern"] = f"^{_PLAIN_CHAR}{{{low},{high}}}$"
    return fixed
