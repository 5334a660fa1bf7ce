# The two commands a new user runs: `make demo` and `make test`. Both bootstrap .venv themselves.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test up lint typecheck schemas bench sysdeps clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# System tools some tests use (archive checkers, Prometheus); installed only where missing.
sysdeps:
	@bash .ci/sysdeps

demo: $(STAMP)
	$(BIN)/jetmedia demo

up: $(STAMP)
	$(BIN)/jetmedia up

test: $(STAMP) sysdeps
	$(BIN)/ruff check shared services tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check shared services tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

schemas: $(STAMP)
	$(BIN)/jetmedia schemas

bench: $(STAMP)
	$(BIN)/python bench/bus.py

clean:
	rm -rf $(VENV) .jetmedia *.egg-info
