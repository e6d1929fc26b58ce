# The two commands: `make demo` and `make test`. Each sets up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
MIRROR := $(abspath ../shared/data)
export LLMSCRATCH_DATA_MIRROR ?= $(if $(wildcard $(MIRROR)/README.md),$(MIRROR),)

.PHONY: demo test lint venv clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# Stamp files: reinstall only when pyproject.toml changes.
$(VENV)/.installed-dev: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $@ $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -c constraints.txt -e .
	touch $@

venv: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(BIN)/llmscratch demo

test: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q --timeout=900 $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV)
