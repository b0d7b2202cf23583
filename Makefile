# Two commands on a fresh machine: `make run` and `make test` (see README.md).
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
# pip on these machines warns once per package about a missing local index; hide only that line.
QUIET_PIP := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
# Set to https://download.pytorch.org/whl/cpu where pip would otherwise fetch the CUDA build.
TORCH_INDEX ?=
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-bf16 test-fast lint bench clean browser

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip $(QUIET_PIP)
	# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(QUIET_PIP)
	DS_BUILD_OPS=0 $(BIN)/python -m pip install --quiet -e '.[dev]' $(QUIET_PIP)
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/career run

# --durations: the 15 slowest tests, so that the next slow one is seen.
test: $(STAMP) browser
	$(BIN)/python -m pytest -q --durations=15

# The whole suite as on a CPU with native bf16 (`precision: auto` -> bf16 autocast), whatever this
# CPU is: every process reads a copy of such a machine's /proc/cpuinfo (tests/data/cpuinfo).
test-bf16: $(STAMP) browser
	$(BIN)/python -m pytest -q --durations=15 --cpu bf16

# Headless Chromium (Debian's chromium + chromium-driver) for tests/test_report.py's page check.
browser:
	bash tests/install_chromium.sh

# Quick iteration: everything but the tests marked slow (multi-process training, long sharding).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" --durations=10

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python benchmarks/synth_throughput.py
	$(BIN)/python benchmarks/sim_difficulty.py
	$(BIN)/python benchmarks/shard_throughput.py
	$(BIN)/python benchmarks/loader_throughput.py

clean:
	rm -rf $(VENV) career_run .pytest_cache
