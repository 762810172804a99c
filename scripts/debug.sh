#!/usr/bin/env bash
# The debug build over the WHOLE test suite: aiofast built with AIOFAST_DEBUG=1 (-O0 -g3
# -UNDEBUG: C asserts, and every type's FA_ASSERT_CONSISTENT invariant checks after every
# mutation; see src/debug.h) into .build-debug-3.X, run with the test venv .venv-3.X on
# pytest-xdist workers (scripts/_pythons.sh: make_flavour_build, run_suite). A broken invariant stops the process with
# "aiofast invariant broken at file:line ..." and the Python traceback.
#
#   bash scripts/debug.sh                  # 3.10 to 3.15 (3.14, 3.15: in scripts/newpython.sh's chroot)
#   bash scripts/debug.sh 3.11 -- -x       # some versions, extra pytest arguments after --
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_pythons.sh
split_args "$@"
status=0
run_chroot_part "" scripts/debug.sh || status=1
for v in "${VERSIONS[@]}"; do
    echo "=== debug build, Python $v: build"
    AIOFAST_DEBUG=1 make_flavour_build "$v" debug \
        || { echo "=== debug build, Python $v: BUILD FAILED"; status=1; continue; }
    export PYTHONPATH="$FLAVOUR_PATH"
    if [ "$("$FLAVOUR_PY" -c 'import aiofast._core as c; print(c._debug)' 2>&1)" != "1" ]; then
        echo "=== debug build, Python $v: the installed build has no invariant checks"
        status=1
        continue
    fi
    echo "=== debug build, Python $v: tests"
    if HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-ci}" run_suite "$FLAVOUR_PY" "${PYTEST_ARGS[@]}"; then
        echo "=== debug build, Python $v: passed"
    else
        echo "=== debug build, Python $v: FAILED"
        status=1
    fi
done
exit $status
