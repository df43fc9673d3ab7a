#!/usr/bin/env bash
# One command from a fresh clone to a served-ready model: installs the stack, builds small TF Hub
# modules offline, fine-tunes on the built-in review corpus, evaluates and exports, under
# runs/quickstart (python -m bert_tf2.quickstart; run again, it replaces its own earlier run).
# Extra arguments go to bert_tf2.train (e.g. --epochs=1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m bert_tf2.quickstart "$@"
