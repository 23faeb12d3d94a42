# The two commands of the README:
#   make demo   local control plane + operator, shown running, then stopped
#   make test   lint + types + unit + integration tests (what CI runs)
# and, for performance work, `make bench` (docs/performance.md); for reliability, `make chaos`
# (docs/reliability.md).
# Both install what they need: a virtualenv in .venv, Debian packages, and the
# Go-built Kubernetes binaries cached in ~/.cache/jobbatch (see e2e/tools.py).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench chaos e2e lint typecheck unit integration tools deps crds images clean

demo: $(STAMP) tools
	$(BIN)/python -m e2e.demo

test: lint typecheck
	$(BIN)/pytest tests

# JobBatch against a native Indexed Job on local control planes; BENCH_ARGS, e.g. "--runs 1 --shards 1000".
bench: $(STAMP) tools
	$(BIN)/python -m bench.run $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check operator sdk tests e2e bench
	$(BIN)/ruff format --check operator sdk tests e2e bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: $(STAMP) tools
	$(BIN)/pytest tests/integration

# Faults while batches run: operator SIGKILLs, leader handovers, API server restarts, a frozen etcd,
# deleted pods; what was lost or run twice (docs/reliability.md). About 12 minutes; not part of `test`.
chaos: $(STAMP) tools
	$(BIN)/python -m e2e.chaos $(CHAOS_ARGS)

# The import pipeline at full size on a real node: 100,000 records from S3 into PostgreSQL through chaos
# (examples/06-import/README.md). About 4.5 minutes on 2 cores; not part of `test` (which runs it at 3,000 records).
e2e: $(STAMP) tools
	$(BIN)/python -m e2e.pipeline $(E2E_ARGS)

# Regenerate the CRD from operator/jobbatch/api.py into crds/ and the chart's template (a unit test fails on drift).
crds: $(STAMP)
	for plural in jobbatches cronjobbatches batchqueues; do \
	  $(BIN)/python -m jobbatch.crd $$plural > crds/jobbatch.io_$$plural.yaml && \
	  $(BIN)/python -m jobbatch.crd --chart $$plural > charts/jobbatch-operator/templates/crd-$$plural.yaml || exit 1; \
	done

# Operator, example-worker, import-worker and pause images as docker-archive tars in ~/.cache/jobbatch/images, from a
# Debian base made here (no registry, no Docker; e2e/images.py). images/build.sh builds them with Docker.
images: $(STAMP)
	$(BIN)/python -m e2e.images build

tools: $(STAMP) deps
	$(BIN)/python -m e2e.tools ensure

# openssl makes the local cluster's certificates; go builds its binaries once.
deps:
	@command -v openssl >/dev/null || (apt-get update -qq && apt-get install -y -qq openssl)
	@command -v go >/dev/null || { echo "go (>= 1.25) is needed to build the Kubernetes binaries" >&2; exit 1; }

$(STAMP): pyproject.toml sdk/pyproject.toml
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || (apt-get update -qq && apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV))
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ./sdk -e '.[dev]'
	@touch $@

clean:
	-$(BIN)/python -m e2e.cluster down --name demo
	-$(BIN)/python -m e2e.cluster down --name pytest
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
