# Two commands: `make demo` runs the whole pipeline on the tiny default, `make test` runs the tests.
# Both create .venv and install the project the first time (and again when pyproject.toml changes).
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=

.PHONY: demo test lint clean bench lock

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
