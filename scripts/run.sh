#!/usr/bin/env bash
# Quick start, command 1: build and run Edge with config/edge.toml — every
# listener on unprivileged loopback ports, the embedded SQLite store in var/,
# seeded with config/example-routes.json on the first start.
# Extra arguments go to `edge` (e.g. `check-config`). Stop it with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh run
cargo build --release --locked --bins
exec target/release/edge --config config/edge.toml "$@"
