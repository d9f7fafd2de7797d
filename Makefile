# Task runner. `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint format bench system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## The main job on the embedded defaults: check the example issue and build every variant.
demo: $(STAMP)
	$(BIN)/mailout issue check 2019-01
	$(BIN)/mailout preview 2019-01

## The whole test suite, browser tests included (installs Debian's chromium when missing and root).
test: $(STAMP) system-deps
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

bench: $(STAMP)
	$(BIN)/python bench/render.py

system-deps:
	@scripts/system-deps

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
