# OrgGraph: `make run` (demo gateway on the embedded sandboxes) and `make test` (everything CI runs).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test lint format schema sandbox clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,lint,redis]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/orggraph serve

sandbox: install
	$(BIN)/orggraph sandbox

schema: install
	$(BIN)/orggraph schema > schema.graphql

lint: install
	$(BIN)/ruff check gateway providers tests
	$(BIN)/ruff format --check gateway providers tests
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix gateway providers tests
	$(BIN)/ruff format gateway providers tests

test: install lint
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
