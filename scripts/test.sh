#!/usr/bin/env bash
# The project's test entry point (what CI runs): machine set-up, full build, every test.
# Exits non-zero if anything fails; the test runner's own summary line is the last thing printed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh

cargo build --all-targets

if cargo nextest --version >/dev/null 2>&1; then
    # --no-fail-fast: one broken area must not hide the state of the others.
    cargo nextest run --no-fail-fast
else
    echo "test.sh: cargo-nextest unavailable, using cargo test"
    cargo test --no-fail-fast
fi
