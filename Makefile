# `make serve` runs the service on SQLite; `make test` lints (ruff), type-checks (mypy), builds the docs
# and runs the whole suite.
# Each sets up what it needs first: a virtualenv with the pinned packages, serving's only
# (requirements.txt and the package) for `make serve`, the test tools on top for the rest.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SERVING := $(VENV)/.installed-serve
INSTALLED := $(VENV)/.installed-test

.PHONY: serve test test-fast docs bench screenshots

$(SERVING): requirements.txt setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -e .
	touch $@

$(INSTALLED): $(SERVING) requirements-test.txt requirements-docs.txt
	$(BIN)/python -m pip install --quiet -r requirements-test.txt
	touch $@

serve: $(SERVING)
	$(BIN)/flask --app wsgi db upgrade
	$(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

# The suite starts hundreds of Python processes (gunicorn workers, flask commands): each reads
# keyservice's compiled modules from a cache in the venv instead of compiling them again, even
# where the environment says not to write bytecode (PYTHONDONTWRITEBYTECODE).
test test-fast: export PYTHONPYCACHEPREFIX := $(abspath $(VENV))/pycache
test test-fast: export PYTHONDONTWRITEBYTECODE :=

# The tests start their own PostgreSQL, Redis and nginx (the production setup's proxy,
# deploy/nginx/) on 127.0.0.1 (tests/services.py) and stop them after, and drive Debian's
# Chromium for the dashboard; those are installed here when missing and we may (root).
# Without them those tests skip, except in CI, where they fail. The suite runs in 4 pytest-xdist
# processes on 2 cores: many tests mostly wait (slow clients, rate-limit windows, outages), and
# worksteal keeps a long test from holding up the end.
test: $(INSTALLED)
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing="$$missing nginx-light"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing="$$missing postgresql"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ]; then \
		echo "installing$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	$(BIN)/ruff check
	$(BIN)/ruff format --check
	$(BIN)/mypy
	$(MAKE) docs
	$(BIN)/pytest -n 4 --dist worksteal

# The documentation site (Sphinx, docs/): warnings are errors and every internal reference must
# resolve (-n). It is built into the venv, outside the tracked tree; open $(DOCS_HTML)/index.html.
# External links are not checked: the build must work offline.
DOCS_HTML := $(VENV)/docs-html
docs: $(INSTALLED)
	$(BIN)/sphinx-build -E -W --keep-going -n -q -b html docs $(DOCS_HTML)

# Day to day: the in-process tests on SQLite, no server or browser started (about 75 s of CPU,
# in 2 processes); `make test` before a push.
test-fast: $(INSTALLED)
	$(BIN)/pytest -q -n 2 -m "not slow" -k "not postgresql and not redis"

# The service and @require_key against bare Flask, the protected route on SQLite, then on
# PostgreSQL + Redis with the growth figure, tokens against keys, rate limits and quotas beside
# Flask-Limiter, a restart with 200 keys and a random key of 2,000, an identity's two shared limits
# against a key's own, and what a limit costs a request in one process. Each pins its servers to one
# half of the cores and wrk to the other.
bench: $(INSTALLED)
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m bench.against_flask
	$(BIN)/python -m bench.protected_route
	$(BIN)/python -m bench.scale_out
	$(BIN)/python -m bench.tokens
	$(BIN)/python -m bench.ratelimits
	$(BIN)/python -m bench.cold_start
	$(BIN)/python -m bench.many_keys
	$(BIN)/python -m bench.identities
	$(BIN)/python -m bench.in_process

# The dashboard's and the self-serve page's screenshots in docs/, renewed by their browser tests
# (the suite itself writes only to temp dirs).
screenshots: $(INSTALLED)
	SCREENSHOTS_DIR=docs/screenshots $(BIN)/pytest tests/test_dashboard.py -k sqlite
	SCREENSHOTS_DIR=docs/screenshots $(BIN)/pytest tests/test_self_serve_browser.py -k screenshots
