#!/usr/bin/env bash
# Valgrind memcheck over a smoke subset of the tests (valgrind is ~50x slower than native, so
# not the whole suite: ASan covers that). aiofast's release build (with -g symbols), built into
# .build-valgrind-3.X and run with the test venv .venv-3.X, under `valgrind --error-exitcode=99`
# with PYTHONMALLOC=malloc, so every object allocation is a malloc valgrind tracks. Leak
# checking is off here (CPython leaks at exit by design; tests/test_leaks.py checks ours).
#
# The smoke subset: every family's create/use/cancel/destroy scenario on both loops
# (test_smoke.py), the argument fuzzer over every public type (test_fuzz_args.py), the lock
# family's tests and fuzzer, hostile loops and cross-thread use, with the "tiny" hypothesis
# profile. Deselected: the oracle runs (asyncio's own classes: ids "...[asyncio-asyncio]"),
# which check asyncio, and the uvloop runs of the @pytest.mark.asyncio tests (ids
# "...[uvloop-...]"): aiofast's C paths are the same on every loop, and ASan covers uvloop on the
# whole suite (test_smoke.py's scenarios still run on uvloop here). Starting pytest itself takes
# most of a minute under valgrind.
#
# The versions run VALGRIND_JOBS at a time (default: one per core), each into its own log,
# printed when it ends.
#
# Python 3.11 alone runs with --undef-value-errors=no: its own startup (python3.11 -c pass)
# reports ~26 "uninitialised value" errors, all from _PyLong_FromByteArray computing
# Py_SIZE * digit[0] for size 0 (defined, but valgrind cannot see that 0 * undefined is 0) and
# their propagation into the interpreter loop. Invalid reads/writes, use-after-free and bad frees
# are still reported there; 3.10, 3.12 and 3.13 are clean with every check on.
#
#   bash scripts/valgrind.sh               # 3.10 to 3.15 (3.14, 3.15: in scripts/newpython.sh's chroot)
#   bash scripts/valgrind.sh 3.12 -- -x    # some versions, extra pytest arguments after --
#   VALGRIND_TESTS="test_locks.py" bash scripts/valgrind.sh 3.13    # another subset
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_pythons.sh
split_args "$@"
status=0
run_chroot_part "valgrind" scripts/valgrind.sh || status=1
if [ ${#VERSIONS[@]} -eq 0 ]; then exit $status; fi
if ! command -v valgrind >/dev/null; then
    echo "error: valgrind not found (apt-get install -y valgrind)" >&2
    exit 1
fi
read -r -a tests <<< "${VALGRIND_TESTS:-test_smoke.py test_fuzz_args.py test_locks.py test_hostile_loop.py test_threads.py test_fuzz_locks.py}"
existing=()
for t in "${tests[@]}"; do
    if [ -e "tests/${t%%::*}" ]; then existing+=("$t"); fi
done
jobs=${VALGRIND_JOBS:-$(nproc)}
logs=$(mktemp -d "${TMPDIR:-/tmp}/aiofast-valgrind.XXXXXX")
trap 'rm -rf "$logs"' EXIT

run_one() {  # VERSION PY PATH: the subset under valgrind; its exit status goes to $logs/VERSION.rc
    local v="$1" py="$2" path="$3" rc=0
    local vg=(valgrind --tool=memcheck --error-exitcode=99 --leak-check=no
              --errors-for-leak-kinds=none --num-callers=30 -q
              --suppressions=../scripts/valgrind-python.supp)
    if [ "$v" = "3.11" ]; then
        vg+=(--undef-value-errors=no)
    fi
    echo "=== valgrind, Python $v: ${existing[*]}"
    (cd tests && PYTHONPATH="$path" PYTHONMALLOC=malloc \
        HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-tiny}" \
        "${vg[@]}" "$py" -m pytest -c ../pyproject.toml --rootdir .. -q -p no:randomly \
        --capture=sys -k "not asyncio-asyncio and (not uvloop or test_smoke)" "${existing[@]}" \
        "${PYTEST_ARGS[@]}") || rc=$?
    if [ $rc -eq 0 ]; then
        echo "=== valgrind, Python $v: clean"
    elif [ $rc -eq 99 ]; then
        echo "=== valgrind, Python $v: MEMCHECK ERRORS (see above)"
    else
        echo "=== valgrind, Python $v: TESTS FAILED (exit $rc)"
    fi
    echo $rc >"$logs/$v.rc"
}

# builds one after another (they share the source tree), runs in parallel
started=()
for v in "${VERSIONS[@]}"; do
    echo "=== valgrind, Python $v: build"
    make_flavour_build "$v" valgrind \
        || { echo "=== valgrind, Python $v: BUILD FAILED"; status=1; continue; }
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do
        wait -n || true
    done
    run_one "$v" "$FLAVOUR_PY" "$FLAVOUR_PATH" >"$logs/$v.log" 2>&1 &
    started+=("$v")
done
wait
for v in "${started[@]}"; do
    cat "$logs/$v.log"
    if [ "$(cat "$logs/$v.rc" 2>/dev/null)" != 0 ]; then
        status=1
    fi
done
exit $status
