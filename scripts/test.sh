#!/usr/bin/env bash
# Install what the tests need, then run the whole suite and the leak check.
#
# This is the README's test command and what CI runs (.ci/run), as root on a
# fresh Debian 12. Real sandboxes need root: under CI=true a missing
# capability fails the run instead of skipping.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "test: installing cargo-nextest from crates.io" >&2
    cargo install --locked cargo-nextest
fi

profile=default
[[ ${CI:-} == true ]] && profile=ci

baseline=$(mktemp)
trap 'rm -f "$baseline"' EXIT
cargo run --quiet -p warren-testkit --bin warren-leak-check -- --baseline "$baseline"

echo "test: cargo fmt --check"
cargo fmt --all --check
echo "test: cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "test: cargo nextest"
cargo nextest run --workspace --profile "$profile"
echo "test: doc tests"
cargo test --workspace --doc --quiet
echo "test: Python SDK (ruff, mypy --strict, pytest against a real warren serve)"
cargo build --quiet -p warren-cli
sdk/python/scripts/venv.sh
(
    cd sdk/python
    .venv/bin/ruff check --quiet src tests tools examples
    .venv/bin/ruff format --quiet --check src tests tools examples
    .venv/bin/mypy
)
WARREN_BIN="$(realpath "${CARGO_TARGET_DIR:-target}")/debug/warren" \
    sdk/python/.venv/bin/python -m pytest sdk/python/tests
echo "test: leak check"
cargo run --quiet -p warren-testkit --bin warren-leak-check -- --since "$baseline"
