# effilm: `make run` runs every case study's offline quick profile; `make test` runs the test suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PROFILE ?= quick

.PHONY: run test bench ui clean services

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=24"

# Re-install only when the project metadata changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(VENV)/.installed $@

run: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/effilm run all --profile $(PROFILE)

# PostgreSQL and Chromium for the team-server and MLflow UI tests (Debian packages; skipped where not installable)
services:
	@scripts/install-test-services.sh

test: $(VENV)/.installed-dev services
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/quick_profile.py

ui: $(VENV)/.installed
	$(BIN)/effilm ui

clean:
	rm -rf outputs .effilm
