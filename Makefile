# The two commands of the quick start: `make run` and `make test`. Both set up what they need.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PM2_VERSION := 7.0.4
# Drives Debian's firefox-esr over WebDriver BiDi (puppeteer, not the browser-downloading package), and
# checks the client's TypeScript declarations.
PUPPETEER_VERSION := 24.43.1
TYPESCRIPT_VERSION := 5.9.3
# The Node peer `make bench` runs beside the app (bench/peer/server.js).
EXPRESS_VERSION := 5.3.0
# Vercel's CLI for the serverless tests (`vercel build`, offline, no account): 58.10.0 is the newest that installs here.
VERCEL_VERSION := 58.10.0
# All of them pinned in .tools/ (not global), in one npm install without install scripts (none of them needs one).
TOOLS := .tools/node_modules/.installed-pm2-$(PM2_VERSION)-puppeteer-core-$(PUPPETEER_VERSION)-typescript-$(TYPESCRIPT_VERSION)-express-$(EXPRESS_VERSION)-vercel-$(VERCEL_VERSION)
# apt-get needs root; use sudo when we are not.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test test-fast lint bench system-deps clean

## run: serve on 127.0.0.1:8000 under gunicorn (no Redis or Cloudflare needed: STUN only, with warnings)
run: $(STAMP)
	$(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

# Tests wait on servers and browsers far more than they compute: four at a time on two cores. Tests of one
# module-scoped deployment, browser or Redis topology share a group, so that only one worker builds it.
TEST_WORKERS ?= 4

## test: install what the tests need (redis-server, the venv) and run them all, in parallel
test: system-deps
	@$(MAKE) --no-print-directory --output-sync=target -j2 lint $(TOOLS)  # the venv and the Node tools download side by side
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

## test-fast: the unit tests only (in process, fakes and stand-ins: no servers, no browsers), in seconds
test-fast: $(STAMP)
	FUZZ_EXAMPLES=100 $(BIN)/python -m pytest -q -m unit

## bench: the app against a bare-Flask floor (sync and gthread) and an Express peer (wrk), the default configuration, cold burst, expiry crossing, outage, memory; the box (the nginx site) against the peer; the serverless cold start
bench: system-deps $(STAMP) $(TOOLS)
	$(BIN)/python bench/run.py
	$(BIN)/python bench/box.py
	$(BIN)/python bench/cold_start.py

## lint: ruff's checks and format check, and the direction of imports (import-linter); settings in pyproject.toml
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

## system-deps: Debian/Ubuntu packages the tests and the benchmark run for real (redis-server, coturn, nginx, chromium, firefox-esr, wrk, podman, prometheus, pebble, certbot, ...)
system-deps:
	@missing=""; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	for need in redis-server:redis-server turnserver:coturn nginx:nginx chromium:chromium firefox-esr:firefox-esr wrk:wrk systemd-analyze:systemd openssl:openssl curl:curl npm:npm git:git podman:podman runc:runc mmdebstrap:mmdebstrap promtool:prometheus pebble:pebble certbot:certbot; do \
		command -v $${need%%:*} >/dev/null 2>&1 || [ -x /usr/sbin/$${need%%:*} ] || missing="$$missing $${need#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "Installing:$$missing"; \
		$(SUDO) apt-get update -q && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

## the Node tools the tests and the benchmark run (pm2, puppeteer-core, typescript, express, vercel), pinned
$(TOOLS):
	npm install --silent --no-audit --no-fund --prefer-offline --ignore-scripts --save-exact --prefix .tools \
		pm2@$(PM2_VERSION) puppeteer-core@$(PUPPETEER_VERSION) typescript@$(TYPESCRIPT_VERSION) express@$(EXPRESS_VERSION) vercel@$(VERCEL_VERSION)
	touch $@

$(STAMP): requirements.txt requirements-dev.txt
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || $(MAKE) --no-print-directory system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache
