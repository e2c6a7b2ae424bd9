#!/usr/bin/env bash
# tests/run.sh — run every test of llmq and end with one summary line:
#     N passed, N failed, N skipped
#
# Suites:
#   - C tests: every executable under $BUILD/tests/ (cmocka, TAP output);
#     each cmocka test case counts once.
#   - Python tests: pytest over tests/ (test_*.py), each test case counts once.
#   - The CUDA backend on the emulated device: the C suites under
#     $EMU_BUILD/tests/gpu/ (built by `make cuda-emu`; EMU_BUILD is given by
#     `make test`), and tests/gpu/test_emu_*.py among the Python tests.
# A suite that exits non-zero without reporting a failed case (a crash, a
# sanitizer report) counts as one failure of its own.  Skips are listed by
# name with their reason so that a skipped test is never mistaken for a pass.
#
# Environment handed to the tests (and OMP_WAIT_POLICY=passive unless set):
#   LLMQ_ROOT    the repository root        LLMQ_BUILD   the build folder
#   LLMQ_SHARED  ../shared when it exists (tests skip with a message otherwise)
#   LLMQ_EMU_BUILD  the emulated CUDA build (EMU_BUILD), when given
# Filters: TESTS='substring' runs only suites whose path contains it.
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD=${BUILD:-build}
case "$BUILD" in /*) ;; *) BUILD="$ROOT/$BUILD" ;; esac
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
export LLMQ_ROOT="$ROOT" LLMQ_BUILD="$BUILD"
# The suite runs redis-server, gateways, workers and pytest side by side on a
# few cores: OpenMP threads that spin at their barriers (libgomp's default)
# take the cores the other processes need (worker, e2e and engine tests took
# 52-80 s instead of 27-33 s on a 2-core VM).  Results do not depend on it.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
if [ -d "$ROOT/../shared" ]; then export LLMQ_SHARED=$(cd "$ROOT/../shared" && pwd); fi
FILTER=${TESTS:-}
EMU_BUILD=${EMU_BUILD:-}
if [ -n "$EMU_BUILD" ]; then
    case "$EMU_BUILD" in /*) ;; *) EMU_BUILD="$ROOT/$EMU_BUILD" ;; esac
    export LLMQ_EMU_BUILD="$EMU_BUILD"
fi

passed=0 failed=0 skipped=0
failures=() skips=()
logdir=$(mktemp -d "${TMPDIR:-/tmp}/llmq-tests.XXXXXX")

run_c_suite() {
    local bin=$1 name log rc
    name=${bin#"$BUILD"/}
    if [ -n "$EMU_BUILD" ] && [[ "$bin" == "$EMU_BUILD"/* ]]; then name="emu:${bin#"$EMU_BUILD"/}"; fi
    log="$logdir/$(echo "$name" | tr / _).log"
    local t0=$SECONDS
    CMOCKA_MESSAGE_OUTPUT=TAP "$bin" >"$log" 2>&1
    rc=$?
    local secs=$((SECONDS - t0))
    local p f s
    p=$(grep -cE '^ok [0-9]+' "$log")
    s=$(grep -cE '^not ok [0-9]+ # SKIP' "$log")
    f=$(grep -E '^not ok [0-9]+' "$log" | grep -vc '# SKIP')
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
    while IFS= read -r l; do skips+=("$name: ${l#not ok * # SKIP }"); done < <(grep -E '^not ok [0-9]+ # SKIP' "$log")
    if [ "$f" -gt 0 ]; then
        failures+=("$name")
        echo "---- $name: $f failed"; grep -vE '^(ok |1\.\.)' "$log" | head -60
    elif [ "$rc" -ne 0 ]; then
        failed=$((failed + 1)); failures+=("$name (exit $rc)")
        echo "---- $name exited $rc without a failed case"; tail -40 "$log"
    fi
    printf '%-44s %3d passed %3d failed %3d skipped %4d s\n' "$name" "$p" "$f" "$s" "$secs"
}

if [ -d "$BUILD/tests" ]; then
    while IFS= read -r bin; do
        [ -n "$FILTER" ] && [[ "${bin#"$BUILD"/}" != *"$FILTER"* ]] && continue
        run_c_suite "$bin"
    done < <(find "$BUILD/tests" -type f -perm -u+x -name 'test_*' | sort)
fi

# The CUDA backend on the emulated device (kernels/cuda/emu/): only its GPU
# suites, the others are the same code as above.  Detector reports abort.
if [ -n "$EMU_BUILD" ]; then
    if [ -d "$EMU_BUILD/tests/gpu" ]; then
        while IFS= read -r bin; do
            [ -n "$FILTER" ] && [[ "emu:${bin#"$EMU_BUILD"/}" != *"$FILTER"* ]] && continue
            LLMQ_EMU_FATAL=1 run_c_suite "$bin"
        done < <(find "$EMU_BUILD/tests/gpu" -type f -perm -u+x -name 'test_*' | sort)
    else
        skipped=$((skipped + 1)); skips+=("emulated CUDA suites: $EMU_BUILD/tests/gpu not built (make cuda-emu found no CUDA headers)")
    fi
fi

# Python suites (end-to-end, golden references, CLI behaviour).
pyfiles=$(find tests -name 'test_*.py' -not -path '*/fixtures/*' | sort)
if [ -n "$FILTER" ]; then pyfiles=$(echo "$pyfiles" | grep -F -- "$FILTER" || true); fi
if [ -n "$pyfiles" ]; then
    if [ ! -x "$PYTHON" ]; then
        echo "---- Python tests need $PYTHON: run 'make deps' first"
        failed=$((failed + 1)); failures+=("python suites (no venv)")
    else
        log="$logdir/pytest.log"
        # shellcheck disable=SC2086
        # --durations: the slowest tests are listed at the end (where CI's minutes go)
        "$PYTHON" -m pytest -q -rs -p no:cacheprovider --durations=20 $pyfiles >"$log" 2>&1
        rc=$?
        summary=$(grep -E '^=+ .*(passed|failed|skipped|error|no tests ran).* =+$|^[0-9]+ (passed|failed|skipped)' "$log" | tail -1)
        num() { echo "$summary" | grep -oE "[0-9]+ $1" | grep -oE '[0-9]+' || echo 0; }
        p=$(num passed); f=$(num failed); s=$(num skipped); e=$(num error)
        f=$((f + e))
        passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
        while IFS= read -r l; do skips+=("pytest: ${l#SKIPPED }"); done < <(grep -E '^SKIPPED' "$log")
        if [ "$f" -gt 0 ]; then
            failures+=("pytest")
            echo "---- pytest: $f failed"; grep -vE '^SKIPPED' "$log" | tail -120
        elif [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then
            failed=$((failed + 1)); failures+=("pytest (exit $rc)")
            echo "---- pytest exited $rc"; tail -60 "$log"
        fi
        printf '%-44s %3d passed %3d failed %3d skipped\n' "pytest" "$p" "$f" "$s"
        echo "slowest Python tests:"
        sed -n '/slowest 20 durations/,/^$/p' "$log" | grep -E '^[0-9.]+s ' | sed 's/^/  /'
    fi
fi

if [ ${#skips[@]} -gt 0 ]; then
    echo "skipped:"; for s in "${skips[@]}"; do echo "  $s"; done
fi
if [ ${#failures[@]} -gt 0 ]; then
    echo "failed suites:"; for s in "${failures[@]}"; do echo "  $s"; done
fi
echo "logs: $logdir"
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ] && [ $((passed + failed)) -gt 0 ]
