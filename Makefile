# Command 1: `make demo`   Command 2: `make test`   Benchmarks: `make bench` (`make bench-quick`)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,ray]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/edge-toolchain demo --out demo-run

test: $(VENV)/.installed
	$(BIN)/ruff check toolchain tests benchmarks
	$(BIN)/python -m pytest -q -ra

lint: $(VENV)/.installed
	$(BIN)/ruff check toolchain tests benchmarks

# writes benchmarks/results/<date>-<machine>[-quick].json and .md; run it on a quiet machine
bench: $(VENV)/.installed
	$(BIN)/python benchmarks/suite.py

bench-quick: $(VENV)/.installed
	$(BIN)/python benchmarks/suite.py --quick

clean:
	rm -rf $(VENV) demo-run .pytest_cache
