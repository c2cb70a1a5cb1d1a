# Runlet's build and test targets. They are thin: each runs one tool, and CI (.ci/run) calls
# `make test`, the same target people use. `make` alone prints the list of targets.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Marks a finished `pip install -e '.[dev]'`; it lives inside .venv so that removing .venv
# (or `make clean`) also forces a new install, and pyproject.toml being newer redoes it.
STAMP := $(VENV)/.runlet-installed
# Extra pytest arguments, e.g. `make unit PYTEST_ARGS='-k wire -x'`.
PYTEST_ARGS ?=

export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PIP_NO_INPUT := 1

.PHONY: help install services lint unit integration reliability test demo bench clean

help: ## list the targets (the default)
	@awk 'BEGIN { FS = ":.*## " } /^[a-z][a-z-]*:.*## / { printf "  %-12s %s\n", $$1, $$2 }' \
		$(MAKEFILE_LIST)

install: $(STAMP) ## create .venv and install runlet with its dev tools (fast when nothing changed)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || { echo "creating $(VENV) with $(PYTHON) -m venv"; $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	@test -x $(BIN)/runlet || { echo "error: $(BIN)/runlet is missing after the install" >&2; exit 1; }
	@touch $@

services: ## ensure RabbitMQ and PostgreSQL run on 127.0.0.1 (installs/starts them as root)
	bash scripts/services.sh up

lint: install ## ruff check, ruff format --check, mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: install ## unit tests (no network)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

integration: install services ## integration, e2e and browser tests (real services, terminals, Chromium)
	$(BIN)/pytest tests/integration tests/e2e tests/browser $(PYTEST_ARGS)

reliability: install services ## failures injected on a real 3-node RabbitMQ cluster; prints the table
	@rm -f bench-results/reliability.jsonl
	$(BIN)/pytest -q --durations=8 tests/reliability $(PYTEST_ARGS); status=$$?; \
		echo; echo "== reliability"; $(BIN)/python -m tests.reliability.results; exit $$status

test: install services ## lint, every unit/integration/e2e test, then the reliability suite (what CI runs)
	$(MAKE) --no-print-directory lint
	$(BIN)/pytest -q tests --ignore=tests/reliability --ignore=tests/bench $(PYTEST_ARGS)
	$(MAKE) --no-print-directory reliability

demo: install services ## run the demo (scripts/demo.py)
	$(BIN)/python scripts/demo.py

# Benchmarks (tests/bench/run.py): `make bench`, `make bench BENCH_QUICK=1` (smoke counts),
# `make bench BENCH_ONLY=1,2` (some measurements). Prints one table; writes bench-results/.
BENCH_QUICK ?=
BENCH_ONLY ?=
BENCH_STAMP := $(VENV)/.runlet-bench-installed

$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install -e '.[dev,bench]'
	@touch $@

bench: install services $(BENCH_STAMP) ## benchmarks against the anchors (BENCH_QUICK=1: a smoke run)
	@test -x /usr/sbin/sshd || { echo "installing openssh-server (the ssh -tt baseline)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server; }
	@# byte-compiled as an installed package is, even where PYTHONDONTWRITEBYTECODE is set:
	@# every `runlet` process measured would compile the package's sources otherwise
	$(BIN)/python -m compileall -q runlet actors > /dev/null
	$(BIN)/python -m tests.bench.run $(if $(filter-out 0,$(BENCH_QUICK)),--quick) \
		$(if $(BENCH_ONLY),--only $(BENCH_ONLY))

clean: ## remove .venv, tool caches, build output and .demo/
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .demo build dist *.egg-info
	find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
