"""Writes the settings declaration into the CRD: ``spec.model``, ``spec.engine`` and ``spec.router`` of
``crds/milideployment.yaml`` come from ``mili.common.settings``; the rest of the file is edited by hand.

``make crds`` (``python -m mili.operator.crd``) rewrites the file; a unit test fails when the checked-in
file differs from what this produces, so the CRD cannot drift from what the operator and worker accept.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mili.common import settings

CRD_PATH = Path(__file__).resolve().parents[1] / "crds" / "milideployment.yaml"
HEADER = """\
# MiliDeployment: one served model. Contract: docs/architecture.md "MiliDeployment". The operator
# re-checks all of this (and the cross-field rules) and reports a bad spec as Degraded with an Event
# naming the field. spec.model, spec.engine and spec.router are generated from mili.common.settings
# (common/settings.py): edit that, then run `make crds`; edit the rest here, then run `make crds` to
# normalize the file.
"""
GENERATED_SECTIONS = ("model", "engine", "router")


def spec_schema(crd: dict[str, Any]) -> dict[str, Any]:
    """The ``spec`` schema of the CRD's (only) version."""
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]["properties"]["spec"]


def with_generated_sections(crd: dict[str, Any]) -> dict[str, Any]:
    """``crd`` with the ``properties`` of each generated section from the declaration."""
    properties = spec_schema(crd)["properties"]
    for section in GENERATED_SECTIONS:
        properties[section]["properties"] = settings.crd_properties(section)
    return crd


def render(text: str) -> str:
    """The CRD file ``text`` with its generated sections regenerated, in a normal form."""
    import yaml

    crd = with_generated_sections(yaml.safe_load(text))
    return HEADER + yaml.safe_dump(crd, sort_keys=False, width=110, allow_unicode=True)


def main(argv: list[str] | None = None) -> int:
    """Rewrite ``crds/milideployment.yaml`` (``--check``: exit 1 when it is not up to date)."""
    args = sys.argv[1:] if argv is None else argv
    current = CRD_PATH.read_text()
    rendered = render(current)
    if "--check" in args:
        if rendered != current:
            print(f"{CRD_PATH} is out of date: run `make crds`", file=sys.stderr)
            return 1
        return 0
    CRD_PATH.write_text(rendered)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
