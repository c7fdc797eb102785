# The two commands: `make demo` runs the pipeline, `make test` runs every check.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo venv docs stack lint typecheck deploy-check pytest unit flake-hunt bench soak down clean

test: venv lint typecheck deploy-check docs stack pytest  ## everything CI runs

# Create the venv once; reinstall only when pyproject.toml or the native decoder changes.
# The native decoder (native/, Rust) needs cargo; pip fetches maturin to build it.
NATIVE_SOURCES := native/pyproject.toml native/Cargo.toml native/Cargo.lock $(wildcard native/src/*.rs)
venv: $(STAMP)
$(STAMP): pyproject.toml $(NATIVE_SOURCES)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "shardctl needs Python >= 3.11 (PYTHON=$(PYTHON))" >&2; exit 1; }
	@command -v cargo >/dev/null || { echo "the native CDC decoder needs a Rust toolchain" \
		"(cargo), see https://rustup.rs" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q ./native
	touch $@

# The docs site (mkdocs.yml); strict: a broken link or anchor fails the build. The
# variable silences Material's notice about MkDocs 2, which is not a build warning.
docs: venv  ## build the docs site into .site/; needs no services
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir .site

stack: venv  ## install (once) and start etcd, MariaDB, Kafka, NSQ on 127.0.0.1
	$(BIN)/shardctl dev up

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

deploy-check: venv  ## validate deploy/compose and deploy/k8s statically (no container engine)
	PYTHON=$(BIN)/python deploy/tools/check-manifests

pytest: venv stack  ## the tests (tests/suite.sh: unit tests beside the service tests)
	BIN=$(BIN) tests/suite.sh

unit: venv  ## pure-logic tests only; no services needed
	$(BIN)/pytest tests/unit

# The whole suite 3 times in a row while a CPU burner keeps one core busy: a test that
# depends on timing fails here first. Prints each run's result; fails if any run failed.
flake-hunt: venv stack  ## the suite 3 times under CPU load (about 65 min on 2 cores)
	@$(BIN)/python -c 'while True: pass' & burner=$$!; trap 'kill $$burner' EXIT; \
	failed=0; for run in 1 2 3; do \
		echo "== flake-hunt run $$run of 3 (one core busy)"; \
		if BIN=$(BIN) tests/suite.sh -q; then echo "== run $$run: passed"; \
		else echo "== run $$run: FAILED"; failed=1; fi; \
	done; exit $$failed

demo: venv  ## the whole pipeline under load on the local stack (brings the stack up)
	$(BIN)/shardctl demo $(DEMO_ARGS)

# Benchmarks print figures; they are not tests (bench/processes.py is a helper module).
BENCHES := bench/cdc_throughput.py bench/cdc_reader_throughput.py bench/coordination.py \
	bench/consume.py bench/latency.py bench/rebalance_pause.py

bench: venv stack  ## every benchmark, one after the other (about 15 minutes)
	@set -a; eval "$$($(BIN)/shardctl dev env | sed 's/^export //')"; set +a; \
	for b in $(BENCHES); do echo "== $$b"; $(BIN)/python $$b; done

# 30 minutes of seeded faults under load with 100k-row transactions and every chaos
# kind (bench/chaos.py --list-kinds); prints the chaos report. It restarts the stack's
# etcd, Kafka and MariaDB and starts the optional mariadb2 and mariadb_sink services
# (SOAK_ARGS=--private-stack runs its own). Replay a run with SOAK_ARGS='--seed N';
# choose kinds with SOAK_ARGS='--kinds bootstrap,pk-update'.
# SOAK_SINK: the workers' sink, sql (MariaDB) or postgres.
SOAK_SINK ?= sql
soak: venv stack  ## 30-minute chaos run; not part of `make test`
	$(BIN)/python bench/chaos.py --duration 1800 --large-rows 100000 --large-every 300 \
		--kinds all --sink $(SOAK_SINK) $(SOAK_ARGS)

down:
	$(BIN)/shardctl dev down

clean: down
	rm -rf .shardctl
