#!/usr/bin/env bash
# make deps: the Debian packages llmq builds against and tests with, and a
# virtual environment (.venv/) holding the test-only Python packages.
# Idempotent and quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PKGS=(
  build-essential pkg-config
  libhiredis-dev libev-dev libmsgpack-dev libhttp-parser-dev libjansson-dev
  libpcre2-dev libxxhash-dev libutf8proc-dev libcmocka-dev
  redis-server curl wrk python3 python3-venv
  jq valgrind
  libboost-context-dev
  libcurl4-openssl-dev
  libssl-dev
  stunnel4 openssl
)
PY_PKGS=(numpy pytest redis openai tokenizers msgpack)
# Chart tests (tests/helm): Helm's own Go engine through its C ABI (no helm
# binary needed), the Kubernetes JSON schemas, YAML and JSON Schema.
PY_PKGS+=(helm-python-sdk kubernetes-validate pyyaml jsonschema)
# Metric names (tests/e2e/test_metrics_names.py): Prometheus' own parser of
# the exposition text, and a PromQL parser for the dashboard's and alerts' queries.
PY_PKGS+=(prometheus-client promql-parser)
# Structured output (worker/engine/guide.c, tests/unit/test_guide.c,
# tests/e2e/test_guide_worker.py): llguidance's wheel ships its C API, which
# the worker loads at run time.
PY_PKGS+=(llguidance)
# The GGUF writer of the llama.cpp anchor (tools/to_gguf.py,
# tests/tools/test_to_gguf.py): ggml-org's gguf-py as published on PyPI.
PY_PKGS+=(gguf)

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi

missing=()
for p in "${DEB_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "deps: Debian packages present"
fi

PY=${PYTHON_FOR_VENV:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "deps: creating .venv"
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import numpy, pytest, redis, openai, tokenizers, msgpack, helm_python, kubernetes_validate, yaml, jsonschema, prometheus_client, promql_parser, llguidance, gguf" 2>/dev/null; then
  echo "deps: installing Python test packages: ${PY_PKGS[*]}"
  .venv/bin/pip install -q --disable-pip-version-check "${PY_PKGS[@]}"
else
  echo "deps: Python test packages present"
fi
