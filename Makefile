# pg_shapes entry points. Every target says what it does as it goes.
#
#   make setup       install the toolchain (Debian packages, cargo-pgrx, pgrx init)
#   make build       setup + install the extension (only when changed) + build the sidecar
#   make run         build, start the local cluster .data/pg on port 54321, CREATE EXTENSION,
#                    run the sidecar on PORT (3000) in the foreground; Ctrl-C stops both.
#                    With DATABASE_URL set: build and run only the sidecar, against it.
#   make test        setup (with Node deps) + build + Rust unit, end-to-end and Node conformance tests
#   make bench       build + run the benchmark crate (bench/) with BENCH_ARGS
#   make clean-data  stop the local cluster and remove .data/

SHELL := /bin/bash
.DEFAULT_GOAL := help
# The steps depend on each other's order (setup before build before tests).
.NOTPARALLEL:

export PATH := $(HOME)/.cargo/bin:$(PATH)

# The cluster used by `make run` and removed by `make clean-data`.
RUN_PG_DIR ?= $(CURDIR)/.data/pg
RUN_PG_PORT ?= 54321
export RUN_PG_DIR RUN_PG_PORT

BENCH_ARGS ?=

BANNER = @printf '\n==================== %s ====================\n'

# Build the extension (skipped when nothing changed) and the sidecar.
define build_steps
	@scripts/install_extension.sh
	@echo "==> building pg_shapes_sidecar (cargo build --release -p pg_shapes_sidecar)"
	@cargo build --release -p pg_shapes_sidecar
endef

.PHONY: help setup build build-sidecar run test bench clean-data

help:
	@sed -n '3,11p' Makefile | sed 's/^# \{0,1\}//'

setup:
	@echo "==> make setup: scripts/setup.sh (Debian packages, cargo-pgrx, pgrx init)"
	@scripts/setup.sh

build: setup
	$(build_steps)

build-sidecar:
	@echo "==> building pg_shapes_sidecar (cargo build --release -p pg_shapes_sidecar)"
	@cargo build --release -p pg_shapes_sidecar

# exec: make's shell is replaced by run.sh, so Ctrl-C reaches run.sh directly
# and make waits for its clean-up (sidecar, then cluster) before exiting.
run: $(if $(DATABASE_URL),build-sidecar,build)
	@exec scripts/run.sh

test:
	$(BANNER) "setup: toolchain and Node test dependencies"
	@scripts/setup.sh all
	$(BANNER) "build: extension and sidecar"
	$(build_steps)
	$(BANNER) "tests: shape_log, pg_shapes_sidecar, pg_shapes_tests (end-to-end, Node conformance), pg_shapes_bench (smoke)"
	@cargo test --release -p shape_log -p pg_shapes_sidecar -p pg_shapes_tests -p pg_shapes_bench

bench:
	@if [ ! -f bench/Cargo.toml ]; then echo "bench not yet built (no bench/Cargo.toml)"; exit 1; fi
	@scripts/setup.sh bench
	$(build_steps)
	@echo "==> cargo run --release -p pg_shapes_bench -- $(BENCH_ARGS)"
	@cargo run --release -p pg_shapes_bench -- $(BENCH_ARGS)

clean-data:
	@if [ -f "$(RUN_PG_DIR)/PG_VERSION" ]; then scripts/cluster.sh stop "$(RUN_PG_DIR)"; fi
	@echo "==> removing $(CURDIR)/.data"
	@rm -rf "$(CURDIR)/.data"
