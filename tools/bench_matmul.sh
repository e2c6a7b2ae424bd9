#!/usr/bin/env bash
# tools/bench_matmul.sh [rounds]: the CPU matmul per ISA path (tools/bench_matmul.c),
# built against $BUILD's libraries (make first), 1 and 2 threads.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
bin=$(mktemp /tmp/bench_matmul.XXXXXX)
trap 'rm -f "$bin"' EXIT
${CC:-cc} -std=c11 -O2 -D_GNU_SOURCE -fopenmp -I. tools/bench_matmul.c -o "$bin" \
  "$BUILD/libllmq-kernels.a" "$BUILD/libllmq-common.a" -ljansson -lmsgpackc -lhiredis -lm
echo "== bench_matmul ($(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%FT%TZ))"
echo "load: $(uptime)"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)} OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-active} "$bin" "${1:-5}"
