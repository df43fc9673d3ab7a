#!/usr/bin/env bash
# Installs the stack plus test-only dependencies, then runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh requirements-test.txt
exec .venv/bin/python -m pytest -q -p no:cacheprovider tests "$@"
