# Quantum Trader — `make help` lists the targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help install run test bench soak lint format clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required (found " + sys.version.split()[0] + "); run: make PYTHON=python3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[otel,dev,bench]'
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install the project with every extra

run: $(STAMP) ## Start the whole system on embedded defaults (Ctrl-C stops it)
	$(BIN)/quantum-trader run

test: $(STAMP) ## Run the whole test suite
	$(BIN)/python -m pytest

bench: $(STAMP) ## Run the benchmarks (prints ratios against a bare baseline)
	$(BIN)/quantum-trader bench

soak: $(STAMP) ## Run the whole system under load for SOAK_SECONDS (1800) and judge boundedness
	$(BIN)/python -m bench.soak --orders-per-s $${SOAK_ORDERS_PER_S:-5}

lint: $(STAMP) ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP) ## Format the code
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean: ## Remove the virtualenv and local state
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
