# Mesh: `make demo` (set up, plan the example queue, then run a Probe through a local mesh),
# `make test` (set up, then run the test suite), `make lint`, `make bench`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

# torch==2.13.0 resolves to the CPU wheel where one lies in pip's find-links (as on our CPU
# machines and CI); elsewhere it is PyPI's build of the same version.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@$(BIN)/python -c "import torch; print('torch', torch.__version__)"
	touch $(STAMP)

demo: setup
	examples/demo.sh

test: setup
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: setup
	$(BIN)/python benchmarks/packing.py
	$(BIN)/python benchmarks/plan_scale.py
	$(BIN)/python benchmarks/submit_latency.py
	$(BIN)/python benchmarks/queue_drain.py
	$(BIN)/python benchmarks/sim_policies.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
