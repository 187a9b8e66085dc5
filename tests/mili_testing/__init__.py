"""Helpers shared by the test suites (importable as `mili_testing`: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import shutil

import pytest

CI_STRICT = os.environ.get("MILI_CI_STRICT") == "1"


def require_binary(name: str) -> str:
    """Path of ``name`` on PATH; skip the test when absent, except under CI where it fails."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed"
        if CI_STRICT:
            pytest.fail(f"{message} (MILI_CI_STRICT=1: .ci/run should have installed it)")
        pytest.skip(message)
    return path
