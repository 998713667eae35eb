# The two commands: `make demo` and `make test`. Both set up what they need on a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# chromium: Debian's browser, which the browser tests drive through playwright (never `playwright install`).
APT_PACKAGES := ffmpeg sox git chromium
# This machine's pip config lists local indexes that may be absent; their warnings are noise.
PIP_QUIET := 2>&1 | { grep -v "^WARNING: Location 'file://" || true; }

.PHONY: all test test-fast lint demo bench bench-cv bench-eval apt venv services plots-template clean clean-downloads
all: test

apt:
	@missing=""; for p in $(APT_PACKAGES); do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q --no-install-recommends $$missing >/dev/null; fi

$(STAMP): requirements.txt constraints.txt pyproject.toml
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt -c constraints.txt $(PIP_QUIET)
	$(PY) -m pip install -q --no-deps -e . $(PIP_QUIET)
	@touch $@

venv: $(STAMP)

lint: venv
	$(PY) -m ruff check .

# The CeleryExecutor test's PostgreSQL and Redis on loopback: started from Debian's packages where they are
# installed but down; where they are absent the test skips and names what is missing.
services:
	@up() { python3 -c "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 2)" $$1 \
	  2>/dev/null; }; \
	up 6379 || { command -v redis-server >/dev/null && redis-server --daemonize yes --bind 127.0.0.1 --save '' --dir /tmp >/dev/null \
	  && echo "started: redis-server"; } || true; \
	up 5432 || { command -v pg_ctlcluster >/dev/null && for v in /etc/postgresql/*; do \
	  $(SUDO) pg_ctlcluster "$${v##*/}" main start && echo "started: postgresql $${v##*/}"; done; } || true

# CI runs everything; `make test-fast` skips the tests that start services or whole DAGs.
test: apt venv lint plots-template services
	$(PY) -m pytest -q

test-fast: apt venv
	$(PY) -m pytest -q -m "not slow"

demo: apt venv
	$(PY) scripts/demo.py

# Speed is measured here, never asserted in tests; figures land in benchmarks/results/*.json.
bench: apt venv
	$(PY) benchmarks/audioset_download.py
	$(PY) benchmarks/features.py
	$(PY) benchmarks/predict.py
	$(PY) benchmarks/train.py

# Real RAVDESS (../shared/data), 5-fold CV by actor: both baselines, ~15 min on 2 cores.
bench-cv: apt venv
	$(PY) benchmarks/ravdess_cv.py

# Real RAVDESS (../shared/data): the default models' speaker-independent evaluation, ~3 min on 2 cores.
bench-eval: apt venv
	$(PY) benchmarks/ravdess_evaluate.py

# `dvc plots show` pages that render offline: builds .cache/dvc/plots-offline.html (README, "Plots offline").
plots-template:
	@command -v npm >/dev/null || { echo "installing: npm"; \
	  $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q --no-install-recommends npm >/dev/null; }
	python3 scripts/dvc_plots_template.py

# What the pipeline computed, and the demo; what was fetched stays: the raw clip stores (data/raw), the
# source archives and weights (.cache/downloads), every fetched AudioSet clip and remembered failure
# (.cache/audioset: days of YouTube requests), and the DVC remote that holds their pushed copies.
clean:
	rm -rf .demo data/features data/audioset models metrics plots reports .cache/train .cache/evaluate \
	  .cache/gpu-locks

# Everything fetched (not the DVC remote's copies): the next run downloads it again.
clean-downloads:
	rm -rf data/raw .cache/downloads .cache/audioset
