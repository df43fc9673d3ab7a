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
# uv installs the same pinned versions as pip would, faster: it downloads the ~1 GB of wheels
# in parallel (docs/bazel.md has the timings). It reads PyPI (or UV_INDEX_URL), not pip's
# configuration. --compile-bytecode: where PYTHONDONTWRITEBYTECODE is set, a package installed
# without .pyc files is compiled again at every import.
.venv/bin/python -m pip install --quiet "uv==0.13.9"
.venv/bin/python -m uv pip install --quiet --python .venv/bin/python --compile-bytecode \
  -r "$requirements"
