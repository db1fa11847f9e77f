# `make serve` runs the service on SQLite; `make test` type-checks and runs the whole suite.
# Each sets up what it needs first (a virtualenv with the pinned packages).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: serve test bench

$(INSTALLED): requirements.txt requirements-test.txt setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-test.txt -e .
	touch $@

serve: $(INSTALLED)
	$(BIN)/flask --app wsgi db upgrade
	$(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

# Redis for the rate-limit tests against Redis: installed when missing and we may
# (root); the tests start their own server. Without it they skip, except in CI.
test: $(INSTALLED)
	command -v redis-server >/dev/null || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null)
	$(BIN)/mypy
	$(BIN)/pytest

bench: $(INSTALLED)
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m bench.protected_route
