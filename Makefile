# One virtual environment in .venv; torch is installed first from its CPU wheel so that
# no other torch (and no CUDA packages) is ever pulled in.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0

.PHONY: setup demo test test-all lint lint-imports bench-env bench-density2d bench-mnist bench-uivi bench-scaling bench-posteriors bench-posteriordb bench-peers2d bench-spline bench-stan bench-freyfaces bench-gpu clean

$(BIN)/vilab: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test,pyro,stan,images,arviz]'
	touch $(BIN)/vilab

setup: $(BIN)/vilab

demo: setup
	$(BIN)/vilab demo

test: setup
	$(BIN)/python -m pytest -q -m "not slow"

test-all: setup
	$(BIN)/python -m pytest -q

lint: setup lint-imports
	$(BIN)/ruff check src tests benchmarks && $(BIN)/ruff format --check src tests benchmarks

# The layers of src/vilab and the forbidden imports: contracts in pyproject.toml.
lint-imports: setup
	$(BIN)/lint-imports --no-cache

# The benchmarks compare against peers installed from PyPI into their own environment.
# BENCH_NODEPS go in with --no-deps, after the requirements that hold what they import:
# pythae 0.1.2 would also pull the `dataclasses` backport, scikit-learn and imageio
# (see benchmarks/requirements.txt); torch is never replaced.
BENCH := .venv-bench
BENCH_NODEPS := pythae==0.1.2
$(BENCH)/bin/python: benchmarks/requirements.txt pyproject.toml
	$(PY) -m venv $(BENCH)
	$(BENCH)/bin/pip install -q $(TORCH)
	$(BENCH)/bin/pip install -q -e '.[posteriors]' -r benchmarks/requirements.txt
	$(BENCH)/bin/pip install -q --no-deps $(BENCH_NODEPS)
	touch $(BENCH)/bin/python

bench-env: $(BENCH)/bin/python

bench-density2d: bench-env
	$(BENCH)/bin/python benchmarks/density2d.py

# Parts (a) and (b), ≤ 5 minutes on two idle cores; `--part all` adds (c), ~20 min more.
bench-mnist: bench-env
	$(BENCH)/bin/python benchmarks/mnist.py

# Frey Faces: the VampPrior VAE row and its IAF variant, trained and scored in bits/dim
# against the paper's row (~10 min on 2 idle cores; --rows for the Sylvester presets).
bench-freyfaces: setup
	$(BIN)/python benchmarks/freyfaces.py

# UIVI: exact KL vs mean-field and the default flow (~20 min), UIVI vs mean-field VAE on
# MNIST (~55 min), AIS vs IS on the IAF VAE (~25 min); `--part kl|vae|ais` runs one.
bench-uivi: bench-env
	$(BENCH)/bin/python benchmarks/uivi.py

# `vilab train` images/s with 1 and 2 processes (DistributedDataParallel, gloo), ~3 min.
bench-scaling: bench-env
	$(BENCH)/bin/python benchmarks/scaling.py

# The posteriors with known answers × mean-field, full-rank, the default family and a spline
# flow, 90 s of training per fit, two fits at a time (~25 min): k̂, ESS, errors of means and sds.
bench-posteriors: bench-env
	$(BENCH)/bin/python benchmarks/posteriors.py

# 15 posteriordb posteriors × vilab's mean-field, full-rank, default and spline families,
# zuko's MAF and NSF and Pyro's AutoNormal, AutoMultivariateNormal and AutoIAFNormal, 120 s
# of training per fit, two at a time (~2.5 h): ELBO, k̂, errors vs reference draws, W1/floor.
bench-posteriordb: bench-env
	$(BENCH)/bin/python benchmarks/posteriordb.py

# vilab's default and spline families against zuko's NSF and normflows' RealNVP and NSF on
# U1–U4, the banana and normflows' TwoMoons, RingMixture, CircularGaussianMixture at equal
# CPU time, one KL estimator for all (~25 min).
bench-peers2d: bench-env
	$(BENCH)/bin/python benchmarks/peers2d.py

# Steps/s of vilab's spline flows against zuko's on the same work (~2 min).
bench-spline: bench-env
	$(BENCH)/bin/python benchmarks/spline_speed.py

# µs per point of a Stan program's log density + gradient: vilab's batched shim against
# httpstan's extension module, eight schools and diamonds (~4 min with compiling).
bench-stan: setup
	$(BIN)/python benchmarks/stan_speed.py

# On one GPU (≤ 8 min): the device tests there; images/s of seed 004's mean-field and IAF
# models and seconds per 1000 test images × 1000 importance samples against a plain eager
# loop on the same GPU; bf16 against float32; seed 002's preset for the minutes left.
# Without a GPU every part runs on the CPU. On a GPU machine whose own python has a CUDA
# torch (and no internet), run vilab from src/ with it: make bench-gpu PY_GPU=python3
# (packages it lacks, e.g. pydantic or arviz-stats, travel as wheels on PYTHONPATH).
PY_GPU ?= $(BIN)/python
bench-gpu: $(if $(filter $(BIN)/python,$(PY_GPU)),setup)
	PYTHONPATH=src$${PYTHONPATH:+:$$PYTHONPATH} $(PY_GPU) benchmarks/gpu.py

clean:
	rm -rf $(VENV) $(BENCH) runs
