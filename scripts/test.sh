#!/usr/bin/env bash
# Install aiofast and its test dependencies in one venv per Python version (.venv-3.X), then run
# the whole test suite on each: asyncio's loop and uvloop, asyncio's classes as the oracle,
# CPython's own asyncio tests under aiofast.install(). Fails if any version is missing.
# Then, on each, the peers' own test suites against the drop-ins (scripts/peers.sh; skipped when
# pytest arguments select a subset, unless PEERS=1).
#   PYTHONS="3.11" bash scripts/test.sh      # a subset
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_pythons.sh
PYTHONS=${PYTHONS:-"3.10 3.11 3.12 3.13"}
status=0
for v in $PYTHONS; do
    echo "=== Python $v: install"
    py=$(make_venv "$v" test) || { echo "=== Python $v: INSTALL FAILED"; status=1; continue; }
    "$py" -c "import uvloop, aiofast, sys; print('aiofast', aiofast.__version__, 'uvloop', uvloop.__version__, 'python', sys.version.split()[0])"
    echo "=== Python $v: tests"
    # from tests/, so that `import aiofast` finds the installed package, not the source tree;
    # on pytest-xdist workers, one per core (TEST_JOBS=N to choose, 0 for one process)
    run_suite "$py" "$@" || status=1
    # the peers' own test suites against the drop-ins (and against the peers themselves)
    if [ $# -eq 0 ] || [ -n "${PEERS:-}" ]; then
        echo "=== Python $v: the peers' own test suites"
        bash scripts/peers.sh "$py" || status=1
    fi
done
exit $status
