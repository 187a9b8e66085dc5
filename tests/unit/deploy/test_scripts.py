"""Every shell script in the repository passes shellcheck."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mili_testing import require_binary

ROOT = Path(__file__).resolve().parents[3]
SCRIPTS = sorted(
    str(path.relative_to(ROOT))
    for path in ROOT.rglob("*.sh")
    if not any(part.startswith(".") for part in path.relative_to(ROOT).parts)  # .venv, .git, ...
)


def test_the_kind_script_is_among_them():
    assert "scripts/e2e-kind.sh" in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_passes_shellcheck(script: str):
    shellcheck = require_binary("shellcheck")
    checked = subprocess.run(
        [shellcheck, "--external-sources", script], cwd=ROOT, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s.startswith("scripts/")])
def test_script_is_executable_with_a_bash_shebang(script: str):
    path = ROOT / script
    assert path.stat().st_mode & 0o111, f"{script} is not executable"
    assert path.read_text().startswith("#!/usr/bin/env bash\n")
