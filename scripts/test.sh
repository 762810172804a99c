#!/usr/bin/env bash
# Install aiofast and its test dependencies in one venv per Python version (.venv-3.X), then run
# the whole test suite on each: asyncio's loop and uvloop, asyncio's classes as the oracle,
# CPython's own asyncio tests under aiofast.install(). Fails if any version is missing.
# A version this host does not have (3.14, 3.15) runs in scripts/newpython.sh's Debian chroot:
# this script runs itself there for that version (its venv lives in the chroot's copy of the tree).
# Ends with each version's pass counts.
#   PYTHONS="3.11" bash scripts/test.sh      # a subset
#   PYTHONS="3.14 3.15" bash scripts/test.sh -k locks   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_pythons.sh
PYTHONS=${PYTHONS:-$ALL_PYTHONS}
status=0
out=$(mktemp -d "${TMPDIR:-/tmp}/aiofast-test.XXXXXX")
trap 'rm -rf "$out"' EXIT
summary=()
for v in $PYTHONS; do
    rc=0
    py=
    if chroot_only "$v"; then
        echo "=== Python $v: not on this host, in the chroot (scripts/newpython.sh)"
        PYTHONS=$v run_in_chroot "" bash scripts/test.sh "$@" 2>&1 | tee "$out/$v" || rc=$?
    else
        echo "=== Python $v: install"
        if ! py=$(make_venv "$v" test); then
            echo "=== Python $v: INSTALL FAILED"
            summary+=("=== Python $v: INSTALL FAILED")
            status=1
            continue
        fi
        "$py" -c "import uvloop, aiofast, sys; print('aiofast', aiofast.__version__, 'uvloop', uvloop.__version__, 'python', sys.version.split()[0])"
        echo "=== Python $v: tests"
        # from tests/, so that `import aiofast` finds the installed package, not the source tree;
        # on pytest-xdist workers, one per core (TEST_JOBS=N to choose, 0 for one process)
        run_suite "$py" "$@" 2>&1 | tee "$out/$v" || rc=$?
    fi
    [ $rc = 0 ] || status=1
    if [ -z "${py:-}" ] && line=$(grep -E "^=== Python $v: .*(\(ok\)|\(FAILED\)|FAILED)\$" "$out/$v" | tail -1); then
        summary+=("$line")  # (the chroot's run summed itself up)
        continue
    fi
    # pytest's last line of counts ("1052 passed in 61.2s", "2 failed, 1050 passed, ...")
    counts=$(grep -E '^[0-9]+ (passed|failed|errors?|skipped|deselected)|no tests ran' "$out/$v" \
             | tail -1 || true)
    summary+=("=== Python $v: ${counts:-no test counts} $([ $rc = 0 ] && echo '(ok)' || echo '(FAILED)')")
done
printf '%s\n' "${summary[@]}"
exit $status
