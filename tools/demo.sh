#!/usr/bin/env bash
# make demo: the quickstart.  Today: offline generation through the same
# scheduler and engine the worker uses, on the model in $MODEL (a Hugging
# Face directory), or else on a generated tiny random-weight model.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
PYTHON=${PYTHON:-.venv/bin/python}
MODEL=${MODEL:-}
if [ -z "$MODEL" ]; then
  if [ -d ../shared/models/stories260K ]; then
    MODEL=../shared/models/stories260K
    echo "demo: using the stories260K model from ../shared (set MODEL=DIR to choose another)"
  else
    MODEL=$(mktemp -d)/tiny
    "$PYTHON" tools/gen_model.py --shape tiny --out "$MODEL" >/dev/null
    echo "demo: no MODEL given and no ../shared: generated a tiny random-weight model in $MODEL"
  fi
fi
echo "demo: 3 prompts in one continuous batch, greedy, 32 new tokens each"
set -x
"$BUILD/llmq" generate --model "$MODEL" --temperature 0 --max-tokens 32 \
  --prompt-ids 1,403,407,261,378 --prompt-ids 1,306,411,380 --prompt-ids 1,433,267 --json
