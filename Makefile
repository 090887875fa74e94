# Two commands on a fresh machine: `make serve` and `make test`.
# Everything is installed into .venv; nothing is installed by hand.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 3000
USERS  ?= 32
DURATION ?= 60s
SOAK_MINUTES ?= 30

.PHONY: install prepare serve serve-split test lint typecheck unit integration bench loadtest soak dashboard clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: the CPU build; an unpinned torch pulls GBs of CUDA packages.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet --constraint constraints.txt --editable '.[dev]'
	touch $(STAMP)

install: $(STAMP)

prepare: install
	$(BIN)/bentochain prepare

serve: prepare
	$(BIN)/bentochain serve --host $(HOST) --port $(PORT)

serve-split: prepare
	$(BIN)/bentochain serve-split --host $(HOST) --port $(PORT) $(if $(REPLICAS),--replicas $(REPLICAS))

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest tests/unit

integration: install
	$(BIN)/pytest tests/integration

test: lint typecheck
	$(BIN)/pytest

# The serving benchmark: prints its table, writes docs/bench/*.json and .png and the generated
# parts of docs/benchmarks.md (about 30 minutes on 2 cores).
bench: install
	$(BIN)/python -m loadtest.bench

# Locust, headless, against a Bento it serves for the run (or TARGET=http://host:port):
# HTML and CSV reports under loadtest/reports/.
loadtest: install
	$(BIN)/python -m loadtest.run --users $(USERS) --duration $(DURATION) $(if $(TARGET),--host $(TARGET))

# The composed Bento of the default profile at half its saturation load for SOAK_MINUTES, each
# process's memory sampled every minute: no failed request, no process growing 5% after the
# 5th minute (docs/bench/soak.json and its part of docs/benchmarks.md).
soak: prepare
	$(BIN)/python -m loadtest.soak --minutes $(SOAK_MINUTES)

# The dashboard's main panels from a real Prometheus scraping a served Bento under a short
# load: docs/dashboard.png (needs Debian's prometheus: apt-get install prometheus).
dashboard: prepare
	$(BIN)/python -m loadtest.dashboard

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
