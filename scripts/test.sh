#!/usr/bin/env bash
# Quick start, command 2: the whole test suite, as CI runs it (.ci/run).
# Installs what the interop tests need (Prometheus, curl, setpriv), then:
# format check, clippy -D warnings, every test (unit, property, integration,
# interop, crash), the docs build, and the fuzz targets (built, seed corpora
# replayed).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh test

# Disk: CI machines may have little of it. A fresh run gains nothing from
# incremental compilation, whose caches for the workspace crates take hundreds
# of MB; and the fuzz crate builds into the same target directory, reusing the
# dependencies (its dev profile matches the workspace's, see Cargo.toml).
export CARGO_INCREMENTAL=0

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --locked --workspace --all-targets -- -D warnings

step "cargo test"
cargo test --locked --workspace

step "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --locked --workspace --no-deps --quiet

step "fuzz targets: build, replay seed corpora"
cargo test --locked --manifest-path fuzz/Cargo.toml --target-dir target
cargo build --locked --manifest-path fuzz/Cargo.toml --target-dir target --bins --quiet

step "all checks passed"
