# The two commands of the README's quick start are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint sandbox-up sandbox-down bench clean

setup: $(STAMP)
	scripts/install-system-packages

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,containers]'
	touch $@

# Start the sandbox stack, run the daily runbook against it, say where the report is.
demo: setup
	$(BIN)/python -m opsbook sandbox up
	$(BIN)/pytest -m daily; status=$$?; \
	  echo "report: $(CURDIR)/reports/latest/report.html"; exit $$status

test: setup lint
	$(BIN)/pytest tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

sandbox-up: setup
	$(BIN)/python -m opsbook sandbox up

sandbox-down: $(STAMP)
	$(BIN)/python -m opsbook sandbox down

bench: setup
	$(BIN)/python bench/daily.py

clean: sandbox-down
	rm -rf $(VENV) reports .opsbook
