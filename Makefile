# OrgGraph: `make run` (demo gateway on the embedded sandboxes) and `make test` (everything CI runs).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test lint format schema sandbox clean redis-server chromium bench chaos conformance-deps compose-check screenshots

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,lint]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/orggraph serve

sandbox: install
	$(BIN)/orggraph sandbox

schema: install
	$(BIN)/orggraph schema > schema.graphql

lint: install
	$(BIN)/ruff check gateway providers tests bench docs
	$(BIN)/ruff format --check gateway providers tests bench docs
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix gateway providers tests bench docs
	$(BIN)/ruff format gateway providers tests bench docs

# The Redis cache tests run a real redis-server; install it where missing (Debian/apt, as root
# or through sudo). Anything else: install redis-server yourself, the tests say so if absent.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "make: installing redis-server for the Redis cache tests"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server >/dev/null; }

# The dashboard's browser tests (tests/browser/) drive Debian's chromium through Playwright
# (executable_path: Playwright's own browser download is never used); install it where missing
# (Debian/apt, as root or through sudo). Elsewhere, put a `chromium` on PATH yourself.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "make: installing chromium for the dashboard's browser tests"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# The GraphQL-over-HTTP conformance audits (tests/test_http_conformance.py) run graphql-http
# under node, pinned by tests/conformance/package-lock.json. `npm ci` runs only when
# node_modules is missing or older than the lock; npm comes from Debian/apt where missing.
CONFORMANCE       := tests/conformance
CONFORMANCE_STAMP := $(CONFORMANCE)/node_modules/.installed-stamp

$(CONFORMANCE_STAMP): $(CONFORMANCE)/package.json $(CONFORMANCE)/package-lock.json
	@command -v npm >/dev/null 2>&1 || { \
	  echo "make: installing nodejs and npm for the GraphQL-over-HTTP conformance audits"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq nodejs npm >/dev/null; }
	npm ci --prefix $(CONFORMANCE) --no-audit --no-fund --loglevel=error >/dev/null
	touch $@

conformance-deps: $(CONFORMANCE_STAMP)

test: install lint redis-server chromium conformance-deps
	$(BIN)/pytest -q

# Load and latency figures (bench/run.py); results go to bench/RESULTS.md. Not run by CI.
bench: install redis-server
	@command -v wrk >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq wrk >/dev/null; }
	@# nginx replays the sandbox's answers for the workers target (bench/static_upstream.py),
	@# started by the bench on a free port: the service the package starts under systemd (on
	@# port 80) is stopped and disabled again, as it was not there before.
	@PATH="$$PATH:/usr/sbin" command -v nginx >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq nginx-light >/dev/null; } || \
	    echo "make: nginx could not be installed; the workers target will say not measured"; \
	  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet nginx 2>/dev/null; then \
	    $$SUDO systemctl disable --now nginx >/dev/null 2>&1 || true; fi; }
	$(BIN)/python bench/run.py

# The dashboard's screenshots in docs/ (shown in the README): demo mode in chromium at
# 1280x800 and 390x844, and one organization's detail. Not run by CI.
screenshots: install chromium
	$(BIN)/python docs/screenshots.py

# A few minutes of mixed traffic while faults switch on and off in every sandbox
# (bench/chaos.py); results go to bench/RESULTS.md. Not run by CI.
chaos: install
	$(BIN)/python bench/chaos.py

# The docker-compose topology for real (three replicas, nginx, Redis, sandboxes): up, checked
# through nginx (one replica's cached response served by another), down. Needs a running Docker
# engine as root; images from Debian's packages by default (deploy/compose/). Not run by CI.
compose-check: install
	$(BIN)/python deploy/compose/check.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
