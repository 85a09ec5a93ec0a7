# VisionConnect: `make run` runs the product locally; `make test` sets up and runs every suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
HOST   ?= 127.0.0.1
PORT   ?= 8000
export DATA_DIR ?= var

.PHONY: run test venv yolo system-deps lint check unit bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

system-deps:
	scripts/install-system-deps

## yolo: ultralytics + torch for relays' object detection (several GB; see scripts/install-yolo)
yolo: venv
	scripts/install-yolo $(VENV)

## run: SecantusDB as a process of its own, the cloud on it (in-memory bus) and a relay node;
## DEMO=1 adds a demo account and camera. Data stays in $(DATA_DIR).
run: $(if $(SKIP_INSTALL),,venv)
	$(BIN)/python scripts/run.py --host $(HOST) --port $(PORT) $(if $(DEMO),--demo)

## lint: ruff and mypy (fast, first)
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## test: install everything, then lint, then every suite inside a loopback-only network
test: venv yolo system-deps lint
	scripts/hermetic $(BIN)/python -m pytest

bench: venv
	$(BIN)/python bench/auth.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
