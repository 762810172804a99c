#!/usr/bin/env bash
# Install aiofast and its test dependencies in one venv per Python version (.venv-3.X), at the
# versions constraints.txt pins, then run the whole test suite on each: asyncio's loop and
# uvloop, asyncio's classes and the peers as the oracle, CPython's own asyncio tests under
# aiofast.install(). A version this host does not have (3.14, 3.15) runs in scripts/newpython.sh's
# Debian chroot: this script runs itself there for that version (its venv lives in the chroot's
# copy of the tree) and reports its rows back. Ends with one table (Python x passed/failed/
# skipped) and `ALL PASSED` or what failed; exits non-zero then. A missing Python fails.
#   bash scripts/test.sh                               # every supported Python (3.10-3.15)
#   PYTHONS="3.11" bash scripts/test.sh -k queue       # a subset; extra arguments go to pytest
#   PYTHONS="3.14 3.15" bash scripts/test.sh -k locks  # in the chroot
#   bash scripts/test.sh --latest-peers                # the oracle tests against the newest
#                                                      # releases of the peers (not in CI's verdict)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_pythons.sh
. scripts/_summary.sh

if [ "${1:-}" = "--latest-peers" ]; then
    shift
    exec bash scripts/latest-peers.sh "$@"
fi

PYTHONS=${PYTHONS:-$ALL_PYTHONS}
for v in $PYTHONS; do
    if chroot_only "$v"; then
        echo "=== Python $v: not on this host, in the chroot (scripts/newpython.sh)"
        run_nested "$v" env PYTHONS="$v" bash scripts/newpython.sh run bash scripts/test.sh "$@" \
            || true
        continue
    fi
    echo "=== Python $v: install"
    if ! py=$(make_venv "$v" test); then
        echo "=== Python $v: INSTALL FAILED"
        record "$v" tests "INSTALL FAILED"
        continue
    fi
    "$py" -c "import uvloop, aiofast, sys; print('aiofast', aiofast.__version__, 'uvloop', uvloop.__version__, 'python', sys.version.split()[0])"
    echo "=== Python $v: tests"
    # from tests/, so that `import aiofast` finds the installed package, not the source tree;
    # on pytest-xdist workers, one per core (TEST_JOBS=N to choose, 0 for one process)
    run_recorded "$v" tests run_suite "$py" "$@" || true
done
print_summary
