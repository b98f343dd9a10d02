# relayml: two set-up commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXAMPLE := examples/fraud
export RELAY_TEST_POSTGRES_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test
# pytest workers (pytest-xdist): one more than the cores, since many tests wait on servers and
# child processes (more only add set-up and contention: on 2 cores, 3 workers 5 m 20 s, 4 workers
# 6 m 15 s); a module's tests stay on one worker (its module fixtures once), the heaviest
# modules start first, the docstring examples are one unit (see conftest.py)
WORKERS ?= $(shell echo $$(($$(nproc) + 1)))
XDIST   := -n $(WORKERS) --dist loadfile
FAST    := not postgres and not server and not cli_process and not slow and not doctest

.PHONY: install demo test test-fast lint format bench clean browser

# bytecode of the tests and of relayml is cached (pytest rewrites the asserts of ~150 modules in
# every worker: seconds each) also where the machine sets PYTHONDONTWRITEBYTECODE
test test-fast: export PYTHONDONTWRITEBYTECODE =

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install relayml with its dev extras

demo: install  ## run load → processing → training on the fraud example and list the runs
	cd $(EXAMPLE) && ../../$(BIN)/python generate.py
	cd $(EXAMPLE) && ../../$(BIN)/relay run load transactions
	cd $(EXAMPLE) && ../../$(BIN)/relay run processing plain
	cd $(EXAMPLE) && ../../$(BIN)/relay run training logreg
	cd $(EXAMPLE) && ../../$(BIN)/relay runs
	@echo "\nNext: cd $(EXAMPLE) && ../../$(BIN)/relay show training/logreg@latest"

lint: install  ## ruff lint and format check, mypy (config in pyproject.toml)
	$(BIN)/ruff check src tests bench examples conftest.py
	$(BIN)/ruff format --check src tests bench examples conftest.py
	$(BIN)/python -m mypy

format: install
	$(BIN)/ruff format src tests bench examples
	$(BIN)/ruff check --fix src tests bench examples

browser:  ## Debian's chromium for the relay ui tests (Playwright drives it; nothing downloaded)
	@command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)

test: lint browser  ## the whole suite (PostgreSQL tests use RELAY_TEST_POSTGRES_URL)
	$(BIN)/python -m pytest -q $(XDIST) --durations=15

# (nothing in it waits on a server or a child process: one worker a core)
test-fast: install  ## the edit loop: no PostgreSQL, no servers, no CLI processes, nothing slow
	$(BIN)/python -m pytest -q -m "$(FAST)" -n auto --dist loadfile

bench: install  ## every benchmark of bench/ (several minutes)
	$(BIN)/python bench/search.py
	$(BIN)/python bench/snapshot.py
	$(BIN)/python bench/resolve.py
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/team.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/bundle.py
	$(BIN)/python bench/cli.py
	$(BIN)/python bench/quality.py
	$(BIN)/python bench/ui.py

clean:
	rm -rf $(EXAMPLE)/.relay $(EXAMPLE)/data .pytest_cache
