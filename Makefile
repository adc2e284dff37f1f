# Keepsake — `make help` lists the targets. `make ci` does exactly what CI does.
.DEFAULT_GOAL := help
SHELL := /bin/bash

export CARGO_TARGET_DIR ?= $(HOME)/.cache/keepsake-target
CARGO ?= cargo

# The DAV clients live in a venv of their own: the caldav library brings urllib3-future, which
# shadows the urllib3 that schemathesis (through requests) needs.
DAV_CLIENTS ?= $(HOME)/.cache/keepsake-dav-clients
export KEEPSAKE_DAV_CLIENTS := $(DAV_CLIENTS)

.PHONY: help
help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

.PHONY: build
build: ## Build every crate
	$(CARGO) build --workspace

.PHONY: run
run: ## Run the server with the embedded default: ./data on the local file system, 127.0.0.1:8080
	$(CARGO) run --release -p keepsake -- serve

.PHONY: dev
dev: ## Run MinIO and the server against it in Docker (infra/docker-compose.yml)
	docker compose -f infra/docker-compose.yml up --build

.PHONY: dev-cluster
dev-cluster: ## Three servers, etcd and MinIO in Docker (infra/docker-compose.cluster.yml): 127.0.0.1:8081-8083
	docker compose -f infra/docker-compose.cluster.yml up --build

.PHONY: moto
moto: ## Install moto[server] (the S3 server the tests start) if it is missing
	@python3 -c 'import moto.server' 2>/dev/null || python3 -m pip install --quiet 'moto[server]'
	@python3 -c 'import moto.server' || { echo "moto[server] is not importable after pip install" >&2; exit 1; }

.PHONY: schemathesis
schemathesis: ## Install schemathesis (the contract fuzzer the e2e tests run) if it is missing
	@command -v schemathesis >/dev/null || python3 -m pip install --quiet 'schemathesis>=4,<5'
	@command -v schemathesis >/dev/null || { echo "schemathesis is not on PATH after pip install" >&2; exit 1; }

.PHONY: dav-clients
dav-clients: ## Install the CardDAV/CalDAV clients the e2e tests drive (vdirsyncer and its own storage test suite, the caldav library, caldav-server-tester; tsdav from npm) under $(DAV_CLIENTS)
	@[ -x $(DAV_CLIENTS)/bin/vdirsyncer ] && [ -x $(DAV_CLIENTS)/bin/caldav-server-tester ] && $(DAV_CLIENTS)/bin/python3 -c 'import caldav, vobject' 2>/dev/null || { \
		python3 -m venv $(DAV_CLIENTS) && \
		$(DAV_CLIENTS)/bin/python3 -m pip install --quiet 'vdirsyncer==0.21.0' 'caldav==3.6.0' 'caldav-server-tester==1.7.0' 'vobject>=0.9,<1'; }
	@[ -d $(DAV_CLIENTS)/vdirsyncer-0.21.0/tests/storage/dav ] && $(DAV_CLIENTS)/bin/python3 -c 'import pytest, pytest_asyncio, hypothesis, aioresponses, requests' 2>/dev/null || { \
		$(DAV_CLIENTS)/bin/python3 -m pip install --quiet 'pytest==9.2.0' 'pytest-asyncio==1.5.0' 'hypothesis>=6,<7' 'aioresponses==0.7.9' 'requests>=2,<3' && \
		$(DAV_CLIENTS)/bin/python3 -m pip download --quiet --no-deps --no-binary :all: 'vdirsyncer==0.21.0' -d $(DAV_CLIENTS) && \
		tar -C $(DAV_CLIENTS) -xzf $(DAV_CLIENTS)/vdirsyncer-0.21.0.tar.gz; }
	@[ -x $(DAV_CLIENTS)/bin/vdirsyncer ] && [ -x $(DAV_CLIENTS)/bin/caldav-server-tester ] && $(DAV_CLIENTS)/bin/python3 -c 'import caldav, vobject' || { echo "the DAV clients are not installed in $(DAV_CLIENTS)" >&2; exit 1; }
	@[ -d $(DAV_CLIENTS)/node/node_modules/tsdav ] || npm install --silent --no-audit --no-fund --prefix $(DAV_CLIENTS)/node 'tsdav@2.3.4'
	@[ -d $(DAV_CLIENTS)/node/node_modules/tsdav ] || { echo "tsdav is not installed in $(DAV_CLIENTS)/node (needs node and npm)" >&2; exit 1; }

.PHONY: dav-profiles
dav-profiles: dav-clients ## caldav-server-tester against Keepsake and Radicale; profiles and a side-by-side table in docs/dav/ (infra/dav_profiles.sh)
	infra/dav_profiles.sh

.PHONY: strace
strace: ## Install strace (the fsync test traces a file-store PUT) if it is missing
	@command -v strace >/dev/null || { sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); $$sudo apt-get update -qq && $$sudo apt-get install -y -qq strace; }
	@command -v strace >/dev/null || { echo "strace is required by make test" >&2; exit 1; }

.PHONY: etcd
etcd: ## Install etcd (Debian's etcd-server: the cluster tests start one on a free port) if it is missing
	@command -v etcd >/dev/null || { sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); $$sudo apt-get update -qq && $$sudo apt-get install -y -qq --no-install-recommends etcd-server; }
	@command -v etcd >/dev/null || { echo "etcd is required by make test (Debian: etcd-server)" >&2; exit 1; }

.PHONY: test
test: moto strace schemathesis dav-clients etcd ## Run every test: unit, property, golden files, and integration on memory, file and S3 (moto)
	@if [ -n "$${KEEPSAKE_BLESS:-}" ]; then echo "KEEPSAKE_BLESS is set: tests never write goldens (make bless does); unset it" >&2; exit 1; fi
	$(CARGO) test --workspace

.PHONY: soak
soak: ## The log simulation over many seeds in release mode (SIM_SEEDS, default 0..500; SIM_STEPS, default 400)
	KEEPSAKE_SIM_SEEDS=$${SIM_SEEDS:-0..500} KEEPSAKE_SIM_STEPS=$${SIM_STEPS:-400} \
		$(CARGO) test --release -p keepsake-tests --test it sim_seeds -- --nocapture

.PHONY: lint
lint: ## cargo fmt --check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings

.PHONY: bench
bench: ## Criterion benches (apply, segment codec), the writer throughput run, what upkeep holds in memory and a cold load's CPU; numbers go to docs/BENCHMARKS.md
	$(CARGO) bench -p keepsake-model --features fixtures --bench apply
	$(CARGO) bench -p keepsake-segment --bench codec
	$(CARGO) bench -p keepsake-log --bench writer
	$(CARGO) bench -p keepsake-log --bench upkeep_memory
	$(CARGO) bench -p keepsake-log --bench cold_load
	$(CARGO) bench -p keepsake --bench http_load
	$(CARGO) bench -p keepsake --bench formats
	$(CARGO) bench -p keepsake --bench dav_sync

.PHONY: loadtest
loadtest: ## Fresh server + keepsake-loadgen phases + the PostgreSQL baseline (infra/loadtest.sh); JSON in loadtest-results/
	infra/loadtest.sh

.PHONY: ab
ab: ## Interleaved A/B of this checkout against OLD=<rev>: codec, writer and point-in-time benches, three load phases, the storage baseline on Keepsake's side (infra/ab.sh)
	infra/ab.sh $(OLD)

.PHONY: sustained
sustained: ## 30 minutes of pushes over 100,000 users (SUSTAINED_SECS, default 1800), events/s per minute, checkpoints, compaction and memory (infra/sustained.sh)
	infra/sustained.sh

.PHONY: scale
scale: ## Fill a store to 1,000,000 users in steps (10/50/100%) and measure checkpoint, restart, memory, cold pulls, as-of reads and a fleet restore at each (SCALE_USERS, SCALE_ARGS; infra/scale.sh)
	infra/scale.sh

.PHONY: bless
bless: ## Write the schema and golden files of a new format version (never rewrites an existing one)
	$(CARGO) test --workspace --test segment bless_missing_schema_files -- --ignored --exact --nocapture

.PHONY: ci
ci: lint test ## What CI runs: lint, then every test
