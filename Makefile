# Command 1: `make demo`   Command 2: `make test`   Benchmarks: `make bench` (`make bench-quick`),
# `make bench-optimize`, `make bench-scaleout`
# Developers: `make test-quick` (no heavy tests), `make lint` (ruff + complexity), `make docs` (site/)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-quick lint docs docs-serve bench bench-quick bench-optimize bench-scaleout clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,ray,docs]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/edge-toolchain demo --out demo-run
	@echo "The edge-toolchain command is $(abspath $(BIN))/edge-toolchain (not on PATH):"
	@echo "  source $(VENV)/bin/activate    puts it on PATH for this shell"

test: lint
	$(BIN)/python -m pytest -q -ra

# the fast loop: everything but the tests marked heavy (keras.applications models, device venvs, emulator)
test-quick: lint
	$(BIN)/python -m pytest -q -ra -m "not heavy"

lint: $(VENV)/.installed
	$(BIN)/ruff check toolchain tests benchmarks docs
	$(BIN)/python tests/complexity.py

$(VENV)/.docs-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,docs]'
	touch $@

# the documentation site: docs/*.md -> site/ (fails on a broken link or a stale generated page)
docs: $(VENV)/.docs-installed
	$(BIN)/python -m mkdocs build --strict

docs-serve: $(VENV)/.docs-installed
	$(BIN)/python -m mkdocs serve

# writes benchmarks/results/<date>-<machine>[-quick].json and .md; run it on a quiet machine
bench: $(VENV)/.installed
	$(BIN)/python benchmarks/suite.py

bench-quick: $(VENV)/.installed
	$(BIN)/python benchmarks/suite.py --quick

# `edge-toolchain optimize` against keras.export and TFLiteConverter (benchmarks/optimize_suite.py, ~40 min)
bench-optimize: $(VENV)/.installed
	$(BIN)/python benchmarks/optimize_suite.py

# Ray executor overhead, fleet fan-out, and the five-model pipeline on 1 and 2 Ray workers (~40 min)
bench-scaleout: $(VENV)/.installed
	$(BIN)/python benchmarks/ray_overhead.py --skip-pipeline
	$(BIN)/python benchmarks/ray_suite_wall.py

clean:
	rm -rf $(VENV) demo-run .pytest_cache site
