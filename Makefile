# Two commands for a newcomer: `make demo` and `make test`. Both install what they need.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBS := mariadb-server redis-server postgresql

.PHONY: demo test lint check system-deps venv bench clean

# Debian packages for the private servers the demo and tests start (nothing uses the machine's own),
# and Chromium for the browser test (Playwright drives /usr/bin/chromium; nothing is downloaded).
system-deps:
	@missing=""; \
	command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || missing="$$missing mariadb-server"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    echo "Installing:$$missing"; $(SUDO) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	  else echo "Please install:$$missing"; exit 1; fi; \
	fi

$(STAMP): requirements.txt requirements-dev.txt
	@command -v python3.11 >/dev/null 2>&1 && PYBIN=python3.11 || PYBIN=python3; \
	[ -x $(PY) ] || $$PYBIN -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned, so that nothing resolves it to the multi-gigabyte CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements-dev.txt
	touch $(STAMP)

venv: system-deps $(STAMP)

lint: venv
	$(VENV)/bin/ruff check .
	DJANGO_SETTINGS_MODULE=tests.settings $(PY) manage.py check
	DJANGO_SETTINGS_MODULE=tests.settings $(PY) manage.py makemigrations --check --dry-run

test: venv lint
	$(PY) -m pytest

demo: venv
	$(PY) manage.py demo

bench: venv
	$(PY) bench/sync_throughput.py
	$(PY) bench/connectors_throughput.py

clean:
	rm -rf .run
