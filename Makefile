# Pinpoint — one Makefile; CI calls `make test` through .ci/run.
PYTHON ?= python3
VENV := .venv
UV := $(VENV)/bin/uv
BIN := $(VENV)/bin

.PHONY: install run test lint typecheck bench clean

$(UV):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv

install: $(UV)
	$(UV) sync --frozen --inexact
	@test -x $(BIN)/pinpoint

run: install
	$(BIN)/pinpoint serve

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy shared services

bench: install
	@for f in tests/bench/[!_]*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
