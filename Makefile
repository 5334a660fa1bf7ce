# The two commands a new user runs: `make demo` and `make test`. Both bootstrap .venv themselves.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test up lint typecheck schemas bench bench-deps sysdeps asyncapi node clean

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

# The contract as another language sees it: schemas/asyncapi.yaml through the official AsyncAPI
# parser (0 errors, 0 warnings), schemas/*.json compiled by ajv (2020-12, strict), examples valid.
ASYNCAPI := .ci/asyncapi
ASYNCAPI_STAMP := $(ASYNCAPI)/node_modules/.package-lock.json

node:
	@bash $(ASYNCAPI)/install-node

$(ASYNCAPI_STAMP): $(ASYNCAPI)/package.json $(ASYNCAPI)/package-lock.json | node
	cd $(ASYNCAPI) && npm ci --no-audit --no-fund --loglevel=error
	touch $(ASYNCAPI_STAMP)

asyncapi: $(ASYNCAPI_STAMP)
	node $(ASYNCAPI)/check.js schemas

test: $(STAMP) sysdeps asyncapi
	$(BIN)/ruff check shared services tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check shared services tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

schemas: $(STAMP)
	$(BIN)/jetmedia schemas

bench: $(STAMP)
	$(BIN)/python bench/bus.py

# Bench-only Node sharp, the peer bench/variant.py measures the variant stage against (never part of
# make test; bench/variant.py runs this same `npm ci` itself when node_modules is missing).
bench-deps: | node
	cd bench/sharp && npm ci --no-audit --no-fund --loglevel=error

clean:
	rm -rf $(VENV) .jetmedia *.egg-info $(ASYNCAPI)/node_modules bench/sharp/node_modules
