#!/usr/bin/env bash
# tools/bench_qmatmul.sh [rounds]: the CPU Q8/Q4 matmul and the elementwise
# ops per ISA path (tools/bench_qmatmul.c), built against $BUILD's libraries
# (make first); one OpenMP thread, timed by CPU time (OMP_NUM_THREADS=2 in a
# quiet window for the two-core figure).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
bin=$(mktemp /tmp/bench_qmatmul.XXXXXX)
trap 'rm -f "$bin"' EXIT
${CC:-cc} -std=c11 -O2 -D_GNU_SOURCE -fopenmp -I. -Wall -Wextra -Werror tools/bench_qmatmul.c -o "$bin" \
  "$BUILD/libllmq-kernels.a" "$BUILD/libllmq-common.a" -ljansson -lmsgpackc -lhiredis -lm
echo "== bench_qmatmul ($(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%FT%TZ))"
echo "load: $(uptime)"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} "$bin" "${1:-9}"
