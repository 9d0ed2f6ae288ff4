# Command 1: `make demo`   Command 2: `make test`
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/edge-toolchain demo --out demo-run

test: $(VENV)/.installed
	$(BIN)/ruff check toolchain tests
	$(BIN)/python -m pytest -q -ra

lint: $(VENV)/.installed
	$(BIN)/ruff check toolchain tests

clean:
	rm -rf $(VENV) demo-run .pytest_cache
