# The two commands of the README's quick start are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Podman's socket unless the caller has a Docker engine of its own; testcontainers' Ryuk image
# cannot be pulled here, and /.dockerenv would make it look for a gateway that is not there.
CONTAINER_ENV := DOCKER_HOST=$${DOCKER_HOST:-unix:///run/podman/podman.sock} \
	TESTCONTAINERS_RYUK_DISABLED=true TESTCONTAINERS_CONNECTION_MODE=docker_host

.PHONY: setup engine demo test test-fast test-sandbox test-containers lint sandbox-up sandbox-down bench clean

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

# A container engine (Podman's Docker API here, Docker elsewhere) for the compose tests.
engine: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" scripts/setup-container-engine

# The project's tests in four stages, each of which also runs alone: lint and types; fast
# tests (pytester, probes on local facts: no sandbox); sandbox scenarios (one native stack for
# the stage); containers (a real engine: Podman's Docker API here, Docker elsewhere).
test: setup engine lint test-fast test-sandbox test-containers

test-fast: setup
	$(BIN)/pytest tests -m "not sandbox and not containers"

test-sandbox: setup
	$(BIN)/pytest tests -m "sandbox and not containers"

test-containers: setup engine
	$(CONTAINER_ENV) $(BIN)/pytest tests -m containers

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
