# Pinpoint — one Makefile; CI calls `make test` through .ci/run.
PYTHON ?= python3
VENV := .venv
UV := $(VENV)/bin/uv
BIN := $(VENV)/bin

.PHONY: install run test lint typecheck bench clean

$(UV):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv

# Bytecode is compiled at install (dependencies by uv when the lock changes, the project by
# compileall, which only recompiles what changed): every command starts from bytecode, also on
# hosts that set PYTHONDONTWRITEBYTECODE.
$(VENV)/.synced: uv.lock pyproject.toml | $(UV)
	$(UV) sync --frozen --inexact --compile-bytecode
	@touch $@

install: $(VENV)/.synced
	$(BIN)/python -m compileall -q -j 0 services shared
	@test -x $(BIN)/pinpoint

# `make run PORT=8765` serves on another port (default: PINPOINT_PORT, else 8080).
run: install
	$(BIN)/pinpoint serve $(if $(PORT),--port $(PORT))

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy shared services

bench: install
	@command -v wrk >/dev/null || { echo "make bench needs wrk (HTTP load generator): sudo apt-get install -y wrk"; exit 1; }
	@for f in tests/bench/[!_]*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
