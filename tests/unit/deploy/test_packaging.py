"""Packaging: the root `operator/` folder never shadows the stdlib, and the operator needs no engine code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

# Refuses torch and the engine's packages, then imports every operator module.
_WITHOUT_ENGINE = """
import importlib, importlib.abc, pkgutil, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'torch' or name.startswith(('mili.worker', 'mili.kernels')):
            raise ImportError(f'the operator imported {name}')
sys.meta_path.insert(0, Refuse())
import mili.operator
for module in pkgutil.iter_modules(mili.operator.__path__):
    importlib.import_module(f'mili.operator.{module.name}')
print('ok')
"""


def test_python_started_in_the_repository_root_gets_the_stdlib_operator():
    # -S: without `site` the stdlib's operator is not imported yet, so the current directory (first
    # on sys.path with -c) would win if operator/ were a regular package.
    started = subprocess.run(
        [sys.executable, "-S", "-c", "import operator; operator.eq; print(operator.__file__)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 0, started.stderr
    assert not (ROOT / "operator" / "__init__.py").exists()
    assert Path(started.stdout.strip()).parent != ROOT / "operator"


def test_mili_operator_still_imports_from_the_repository_root():
    started = subprocess.run(
        [sys.executable, "-c", "import operator, mili.operator.main; operator.eq; print('ok')"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 0 and started.stdout.strip() == "ok", started.stderr


def test_the_operator_imports_no_torch_and_no_engine_code():
    started = subprocess.run(
        [sys.executable, "-c", _WITHOUT_ENGINE], cwd="/", capture_output=True, text=True, timeout=120
    )
    assert started.returncode == 0 and started.stdout.strip() == "ok", started.stderr
