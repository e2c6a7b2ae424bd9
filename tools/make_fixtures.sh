#!/usr/bin/env bash
# make fixtures: regenerate tests/fixtures/hf with torch + transformers.
# They are heavy (not in .venv): set FIXTURE_PYTHON to an interpreter that has them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${FIXTURE_PYTHON:-python3}
if ! "$PY" -c "import torch, transformers" 2>/dev/null; then
  echo "make fixtures: $PY lacks torch/transformers; create a venv with 'pip install torch transformers'" >&2
  echo "and run: make fixtures FIXTURE_PYTHON=/path/to/venv/bin/python" >&2
  exit 1
fi
exec "$PY" tools/make_fixtures.py "$@"
