#!/usr/bin/env bash
# The whole test suite: system packages, then every Rust target, then all tests.
#
#   scripts/test.sh [ARGS...]     ARGS go to `cargo test` (e.g. `-- --nocapture`)
#
# `cargo build --all-targets` first so target/debug/libp11audit.so and the p11audit binary
# exist for the integration tests that load the library like an application would.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh

cargo build --all-targets
cargo test "$@"
