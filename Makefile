# llmds — `make help` lists the targets. Everything runs inside .venv, created on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
RUN_ID := $(shell date -u +%Y%m%dT%H%M%SZ)_$(shell git rev-parse --short=7 HEAD 2>/dev/null || echo nogit)

.DEFAULT_GOAL := help
.PHONY: help install run test bench compare diagram clean

help: ## Show the targets and what they do
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-9s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[refs,dev,dask]'
	@touch $(STAMP)

install: $(STAMP) ## Create .venv with llmds, the peer libraries and the test tools

run: $(STAMP) ## The main job: bench + compare every ready component on built-in data, draw the diagram
	$(BIN)/llmds bench all
	$(BIN)/llmds compare all
	$(BIN)/llmds diagram

test: $(STAMP) ## Run the test suite (what CI runs)
	$(BIN)/python -m pytest -q --benchmark-disable

bench: $(STAMP) ## pytest-benchmark micro-benchmarks; JSON into results/bench/<run-id>/
	@mkdir -p results/bench/$(RUN_ID)
	$(BIN)/python -m pytest bench -q --benchmark-only --benchmark-json=results/bench/$(RUN_ID)/benchmark.json

compare: $(STAMP) ## Every ready component against its peers, in one run
	$(BIN)/llmds compare all

diagram: $(STAMP) ## Architecture diagram into results/ARCH_DIAGRAM.png (+ .svg)
	$(BIN)/llmds diagram

clean: ## Remove .venv, caches and generated results (keeps downloaded datasets)
	rm -rf $(VENV) .pytest_cache .hypothesis .benchmarks *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find results -mindepth 1 ! -name README.md -exec rm -rf {} +
