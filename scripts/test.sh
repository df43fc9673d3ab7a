#!/usr/bin/env bash
# Installs the stack plus test-only dependencies, then runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh requirements-test.txt
# One pytest worker per core (at most 4), each taking whole files (--dist loadfile), so a
# file's module fixtures (a trained model, a server) are built once.
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n auto --maxprocesses=4 \
  --dist loadfile tests "$@"
