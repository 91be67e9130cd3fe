# Two commands for a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch 2.13.0 is the CPU build available on the project machines; pin it first so that
# nothing later pulls a multi-GB CUDA build.
TORCH  := torch==2.13.0

.PHONY: demo test venv venv-test lint bench clean

$(VENV)/.base:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.base pyproject.toml
	$(PIP) install -q $(TORCH) -e ".[test]"
	touch $@

venv: $(VENV)/.base
venv-test: $(VENV)/.test

demo: $(VENV)/.base
	$(VENV)/bin/braggtrack demo -o braggtrack-demo --force

test: $(VENV)/.test
	$(PY) -m pytest -n 2 -q

lint: $(VENV)/.test
	$(VENV)/bin/ruff check src tests benchmarks

bench: $(VENV)/.test
	$(VENV)/bin/braggtrack bench

clean:
	rm -rf braggtrack-demo .pytest_cache .ruff_cache
