# maildesk — the two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CONFIG ?= config/maildesk.toml

.PHONY: run test lint typecheck pytest init install install-test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

init: install
	$(BIN)/maildesk --config $(CONFIG) init

## Start the daemon on the embedded default (SQLite, SMTP :8025, web :8080, Maildir outbox).
run: init
	$(BIN)/maildesk --config $(CONFIG) serve

lint: install-test
	$(BIN)/ruff check maildesk tests bench
	$(BIN)/ruff format --check maildesk tests bench

typecheck: install-test
	$(BIN)/mypy

## The whole suite on SQLite, then again on PostgreSQL when MAILDESK_TEST_DATABASE_URL is set.
pytest: install-test
	env -u MAILDESK_TEST_DATABASE_URL $(BIN)/pytest
	@if [ -n "$$MAILDESK_TEST_DATABASE_URL" ]; then \
		echo "== the suite again on PostgreSQL"; \
		$(BIN)/pytest; \
	fi

test: lint typecheck pytest

bench: install-test
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/import_mbox.py
	$(BIN)/python bench/processing.py

clean:
	rm -rf $(VENV) var
