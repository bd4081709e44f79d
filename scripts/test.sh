#!/usr/bin/env bash
# The whole test suite: system packages, then every Rust target, then all tests, then the real
# client programs of tests/clients/run.sh.
#
#   scripts/test.sh [ARGS...]     ARGS go to `cargo test` (e.g. `-- --nocapture`)
#
# `cargo build --all-targets` first so target/debug/libp11audit.so and the p11audit binary
# exist for the integration tests that load the library like an application would.
#
# kryoptic, a PKCS#11 3.0 soft token (GPL, a test provider only), is built outside the
# checkout by scripts/build-kryoptic.sh (cached after the first build) and handed to
# tests/kryoptic.rs as P11AUDIT_TEST_KRYOPTIC. Those tests fail without it when CI is set.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh

P11AUDIT_TEST_KRYOPTIC=$(scripts/build-kryoptic.sh)
export P11AUDIT_TEST_KRYOPTIC

cargo build --all-targets --features fuzzing

# Run every test target, keep the output, and close with one total line over all of them
# (cargo prints one "test result" line per target).
out=$(mktemp)
trap 'rm -f "$out"' EXIT
set +e
# --no-fail-fast: every test target runs even when an earlier one fails.
cargo test --no-fail-fast --features fuzzing "$@" 2>&1 | tee "$out"
status=${PIPESTATUS[0]}
set -e

# Real client programs (pkcs11-tool, GnuTLS, OpenSSL, OpenSSH, Java, Python, p11-kit, NSS),
# directly and through p11audit; one PASS/FAIL line per case.
set +e
tests/clients/run.sh 2>&1 | tee -a "$out"
clients=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { p += $4; f += $6 }
     /^[0-9]+ passed, [0-9]+ failed$/ { p += $1; f += $3 }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$out"
((status == 0 && clients == 0))
