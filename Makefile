# Two commands set up everything on a fresh machine: `make quickstart` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Optional: real spoken digits for AV-Digits (e.g. SPEECH=../shared/data/fsdd/recordings).
SPEECH ?=
PYTEST_ARGS ?=

.PHONY: install quickstart test test-fast lint clean

# -qq: errors only; pip's and setuptools' notes on an editable install tell a user nothing.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade -qq pip
	$(BIN)/pip install -qq -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(BIN)/avmae sweep experiments/quickstart.yaml $(if $(SPEECH),--speech $(SPEECH),)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The inner loop: no Ray runtime, no browser, no servers (under 3 minutes on 2 cores). `make test` is the suite.
test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not ray and not browser and not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache mlflow.db avmae_runs
