# Task runner. `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint format bench system-deps clean

$(STAMP): pyproject.toml
	@scripts/system-deps python
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## The main job on the embedded defaults: build every variant of the example issue, import
## the sample subscribers into SQLite, send a test of each variant (segment × language) and
## dispatch the issue to both lists, each reader in their language (English for a language
## the issue lacks), all into the local outbox (outbox/*.eml), write the public archive
## (build/archive/), then print the status and the archive's address (`mailout serve`).
## The key below signs the links of these local messages only; set your own for real use.
demo: export MAILOUT_SECRET_KEY ?= demo-key-for-the-local-outbox-only
demo: $(STAMP)
	$(BIN)/mailout issue check 2019-01
	$(BIN)/mailout preview 2019-01
	$(BIN)/mailout db upgrade
	$(BIN)/mailout subscribers sync
	$(BIN)/mailout test 2019-01 --to comms@efus.example
	$(BIN)/mailout send 2019-01 --list members --yes --again
	$(BIN)/mailout send 2019-01 --list public --yes --again
	$(BIN)/mailout archive export build/archive
	$(BIN)/mailout status

## The whole test suite (installs Debian's chromium, postgresql, postfix and spamassassin when
## missing and root).
test: system-deps $(STAMP)
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
	$(BIN)/python bench/import.py
	$(BIN)/python bench/web.py
	$(BIN)/python bench/dispatch.py

system-deps:
	@scripts/system-deps

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
