# One virtual environment in .venv; torch is installed first from its CPU wheel so that
# no other torch (and no CUDA packages) is ever pulled in.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0

.PHONY: setup demo test test-all lint bench-env bench-density2d clean

$(BIN)/vilab: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	touch $(BIN)/vilab

setup: $(BIN)/vilab

demo: setup
	$(BIN)/vilab demo

test: setup
	$(BIN)/python -m pytest -q -m "not slow"

test-all: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks && $(BIN)/ruff format --check src tests benchmarks

# The benchmarks compare against peers installed from PyPI into their own environment.
BENCH := .venv-bench
$(BENCH)/bin/python: benchmarks/requirements.txt pyproject.toml
	$(PY) -m venv $(BENCH)
	$(BENCH)/bin/pip install -q $(TORCH)
	$(BENCH)/bin/pip install -q -e . -r benchmarks/requirements.txt
	touch $(BENCH)/bin/python

bench-env: $(BENCH)/bin/python

bench-density2d: bench-env
	$(BENCH)/bin/python benchmarks/density2d.py

clean:
	rm -rf $(VENV) $(BENCH) runs
