#!/usr/bin/env bash
# Create (once) the virtual environment the SDK's tests run in, and install
# the SDK into it with its test dependencies from PyPI. Idempotent: an
# existing environment is reused and pip leaves satisfied packages alone.
#
# Usage: sdk/python/scripts/venv.sh   (environment: sdk/python/.venv)
set -euo pipefail
sdk="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$sdk/.venv"

log() { printf 'sdk-venv: %s\n' "$*" >&2; }

if [[ ! -x $venv/bin/python ]]; then
    log "creating $venv"
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --editable "$sdk[dev]"
# Fails (and stops the test command) if the SDK does not import.
ready=$("$venv/bin/python" -c 'import sys, warren
from importlib.metadata import version
print("warren-sdk", version("warren-sdk"), "on Python", sys.version.split()[0])')
log "ready: $ready"
