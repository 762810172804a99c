#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer over the WHOLE test suite.
#
# For each Python: build aiofast with AIOFAST_SANITIZE=address,undefined (-O1 -g,
# -fno-sanitize-recover; the invariant checks are scripts/debug.sh's) into .build-asan-3.X, then
# run every test (with the test venv .venv-3.X, on pytest-xdist workers) with the gcc
# sanitizer runtime preloaded and PYTHONMALLOC=malloc (so ASan sees every Python object
# allocation). Subprocess tests (leak checks, CPython's lock tests, stubtest) inherit the
# environment and run sanitized too. Every process writes its reports to a fresh log directory;
# the run fails if any report appears there, whatever the tests said: zero reports.
# Leak detection is off (CPython leaks by design at exit); leaks are checked by tests/test_leaks.py.
#
#   bash scripts/asan.sh                   # 3.10 to 3.15 (3.14, 3.15: in scripts/newpython.sh's chroot)
#   bash scripts/asan.sh 3.12              # some versions
#   bash scripts/asan.sh 3.12 -- -k fuzz   # extra pytest arguments after --
# The fuzzers run with the "small" hypothesis profile here (HYPOTHESIS_PROFILE overrides it; the
# plain suite, the debug build and local hunts run more examples, see tests/conftest.py).
set -euo pipefail
# The Redis client's tests (pure Python against a real redis-server, in real time) are left to
# the release and debug runs: under the sanitizer's slowdown their real-time bounds do not hold
# (3.10: three failed and a uvloop loop.close() hung), and the C code they reach is the
# families', which the rest of the suite runs here.
ASAN_IGNORE=(--ignore=test_redis.py --ignore=test_redis_breaker.py --ignore=test_redis_tls.py)
cd "$(dirname "$0")/.."
. scripts/_pythons.sh
split_args "$@"
status=0
run_chroot_part "" scripts/asan.sh || status=1
unset CC  # the preloaded runtime is gcc's, so the build must be gcc's too
libasan=$(gcc -print-file-name=libasan.so)
if [ ! -e "$libasan" ]; then
    echo "error: gcc's libasan.so not found (apt-get install gcc)" >&2
    exit 1
fi
for v in "${VERSIONS[@]}"; do
    echo "=== ASan+UBSan, Python $v: build"
    AIOFAST_SANITIZE=address,undefined make_flavour_build "$v" asan \
        || { echo "=== ASan+UBSan, Python $v: BUILD FAILED"; status=1; continue; }
    # (no `ldd | grep -q` under pipefail: grep's early exit can fail ldd with SIGPIPE)
    libs=$(ldd "$FLAVOUR_PATH"/aiofast/_core*.so || true)
    if [[ "$libs" != *libasan* ]]; then
        echo "=== ASan+UBSan, Python $v: the installed build is not sanitized"; status=1; continue
    fi
    logs=$(mktemp -d "${TMPDIR:-/tmp}/aiofast-asan-$v.XXXXXX")
    echo "=== ASan+UBSan, Python $v: tests (reports in $logs)"
    rc=0
    PYTHONPATH="$FLAVOUR_PATH" PYTHONMALLOC=malloc LD_PRELOAD="$libasan" \
    ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:log_path=$logs/asan:${ASAN_OPTIONS_EXTRA:-}" \
    UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$logs/ubsan" \
    HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-small}" \
        run_suite "$FLAVOUR_PY" "${ASAN_IGNORE[@]}" "${PYTEST_ARGS[@]}" || rc=$?
    if compgen -G "$logs/*" >/dev/null; then
        echo "=== ASan+UBSan, Python $v: SANITIZER REPORTS:"
        for f in "$logs"/*; do echo "--- $f"; cat "$f"; done
        status=1
    elif [ $rc -ne 0 ]; then
        echo "=== ASan+UBSan, Python $v: TESTS FAILED (exit $rc)"
        status=1
    else
        echo "=== ASan+UBSan, Python $v: clean (0 reports)"
    fi
    rm -rf "$logs"
done
exit $status
