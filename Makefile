# Two commands do all set-up on a fresh machine with Python 3.11:
#   make demo   create .venv, install, prepare the built-in dataset, train `demo`, evaluate, draw overlays
#   make test   create .venv, install with test extras, run the test suite
#   make lint   ruff lint + formatter check (configuration in pyproject.toml [tool.ruff]); CI runs it first
# Both are idempotent: the venv is reused, prepared files are skipped, each demo run is a new run folder.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision pinned to the versions this project is tested with (CPU or CUDA wheels per platform)
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?= -n 2

.PHONY: demo test lint install clean-demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/ctxseg prepare synthetic
	$(BIN)/ctxseg train --recipe demo
	$(BIN)/ctxseg eval
	$(BIN)/ctxseg viz overlay
	@echo ""
	@echo "Prepared dataset : data/synthetic (meta.json, splits/, images/, labels/)"
	@echo "Run folder       : runs/latest -> $$(readlink runs/latest) (log.jsonl, best.safetensors, checkpoints/)"
	@echo "Metrics          : runs/latest/eval/metrics.json"
	@echo "Pictures         : runs/latest/eval/overlays/index.html"

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# `ruff format .` fixes what `format --check` reports; `ruff check --fix .` the fixable lint findings
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean-demo:
	rm -rf data/synthetic runs
