# medsettle: `make demo` runs the main job, `make test` passes the tests.
# Everything installs into ./.venv from the project's own files.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export CARGO_TERM_COLOR := never

.PHONY: build sysdeps tools bench-tools test test-rust lint test-py bench demo clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Installs the project with its dev extras; maturin builds the Rust extension (release).
# The wire package medsettle/v1 is committed (regenerate it with `python proto/generate.py`;
# tests/wire/test_generated.py fails when it is stale).
build: $(PY) sysdeps
	$(PIP) install --quiet -e '.[dev]'

# The extension links the system SQLite (the copy Python's sqlite3 loads; engine_rs/src/ledger/mod.rs):
# Debian's libsqlite3-dev, when missing.
sysdeps:
	@test -e /usr/include/sqlite3.h || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libsqlite3-dev; }

# Debian's prometheus package (prometheus, promtool) for the metrics tests, when missing.
tools:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus; }

# h2load (Debian's nghttp2-client) for the load kit's --h2load baseline, when missing.
bench-tools:
	@command -v h2load >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client; }

test: build tools test-rust lint test-py

test-rust:
	cargo test --workspace
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --workspace --all-targets --features engine_rs/python -- -D warnings
	cargo fmt --all --check

lint: build
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(PY) -m mypy.stubtest engine_rs --allowlist tests/stubtest_allowlist.txt

test-py: build tools
	$(VENV)/bin/pytest

# Full-size figures for bench/RESULTS.md (minutes), then the pytest-benchmark suites.
bench: build bench-tools
	$(PY) -m bench.bench_engine --json bench/engine_figures.json
	$(PY) -m bench.bench_matching --rapidfuzz-queries 20
	$(PY) -m bench.bench_frontend --workers 1 --clients 1 --channels 4 --concurrency 32 \
		--duration 8 --visits 20000 --stays 5 --json bench/frontend_figures_w1.json
	$(PY) -m bench.bench_frontend --workers 2 --clients 1 --channels 4 --concurrency 32 \
		--duration 8 --visits 20000 --stays 5 --json bench/frontend_figures_w2.json
	$(PY) -m bench.bench_center --duration 8 --visits 20000 --backlog 100000 \
		--json bench/center_figures.json
	$(PY) -m bench.bench_stay --stays 8 --rounds 2
	$(PY) -m bench.bench_grpc_floor --rounds 2
	$(VENV)/bin/pytest bench --benchmark-enable --benchmark-columns=min,median,mean,ops -q

# A front-end on a fresh SQLite file, a scripted HIS visit over gRPC, the slip, stop.
demo: build
	$(PY) -m server.cli demo

clean:
	rm -rf $(VENV) target .pytest_cache .mypy_cache .ruff_cache .hypothesis .benchmarks
