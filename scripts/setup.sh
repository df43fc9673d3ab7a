#!/usr/bin/env bash
# Creates .venv (if missing) and installs the project's pinned stack into it.
#   bash scripts/setup.sh                 runtime stack (requirements.txt)
#   bash scripts/setup.sh requirements-test.txt   runtime + test-only dependencies
set -euo pipefail
cd "$(dirname "$0")/.."
requirements="${1:-requirements.txt}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
# An old pip backtracks into building scipy from source; a current one resolves wheels.
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r "$requirements"
