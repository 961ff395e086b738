# The two commands a newcomer needs: `make run` and `make test`.
# Each one sets up a local virtual environment (.venv) on first use.
# `make test` runs `make lint` (ruff and mypy, configured in pyproject.toml), then the tests.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_ARGS ?=
BENCH_ARGS ?=

.PHONY: run test test-fast lint format bench openapi venv clean

run: $(STAMP)
	$(BIN)/runtimed serve $(RUN_ARGS)

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The inner loop: every test that does not start a process, in seconds.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not process" $(PYTEST_ARGS)

# What ruff looks at (and leaves out) is set in pyproject.toml, so the paths here stay `.`.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy runtimed

# Fix what ruff can fix by itself, and format.
format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python bench/rest_bench.py $(BENCH_ARGS)

# The OpenAPI document, generated from the app's routes and schemas; tests fail when it is stale.
openapi: $(STAMP)
	$(BIN)/python -m runtimed.web > docs/openapi.json.tmp
	mv docs/openapi.json.tmp docs/openapi.json

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "runtimed needs Python 3.11 or newer (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache
