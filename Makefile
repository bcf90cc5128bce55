# Two commands do everything on a fresh clone (see README "Quick start"):
#   make run   - install into .venv and start the chat app on the offline `tiny` pipeline
#   make test  - install into .venv (with test tools) and run the linter and the whole test suite
# llama-cpp-python compiles llama.cpp on first install (about 5 minutes on 2 cores); pip caches the wheel.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ARGS   ?=

.PHONY: run test install install-test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --progress-bar off -e '.[tiny]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --progress-bar off -e '.[tiny,test]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

run: install
	$(BIN)/moa $(ARGS)

lint: install-test
	$(BIN)/ruff check moa_tui tests benchmarks

test: install-test
	$(BIN)/ruff check moa_tui tests benchmarks
	$(BIN)/python -m pytest -q $(ARGS)

bench: install-test
	$(BIN)/python -m benchmarks $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
