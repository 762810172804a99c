#!/usr/bin/env bash
# The main command: install aiofast (Python 3.11 by default, pinned dependencies), run the
# showcase (one service on the pure-Python stack and on aiofast, same seed, results checked
# identical: a table and a chart), then the benchmark suite against asyncio and the peers.
# Writes nothing tracked: the chart and the benchmarks' JSON go to the temporary directory.
#   bash scripts/demo.sh            # the full run (a few minutes)
#   bash scripts/demo.sh --quick    # a short run (CI runs this)
#   PY=3.12 bash scripts/demo.sh    # another Python (3.14, 3.15: in scripts/newpython.sh's chroot)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_pythons.sh
quick=()
showcase=()
if [ "${1:-}" = "--quick" ]; then
    quick=(--quick)
    showcase=(--jobs 2000 --rounds 1)
fi
if chroot_only "${PY:-3.11}"; then
    # a Python only scripts/newpython.sh's chroot has: the whole command runs there; with
    # BENCH_ARGS=--save the JSON it writes over benchmarks/results/ comes back here
    bash scripts/newpython.sh run bash scripts/demo.sh "$@"
    case " ${BENCH_ARGS:-} " in
        *" --save "*) bash scripts/newpython.sh fetch "benchmarks/results/*-py${PY//./}.json" ;;
    esac
    exit 0
fi
echo "=== installing aiofast and the benchmark dependencies (Python ${PY:-3.11}, .venv-${PY:-3.11})"
py=$(make_venv "${PY:-3.11}" bench)
echo "=== the showcase"
AIOFAST_DEMO=1 "$py" examples/showcase.py "${showcase[@]}" ${SHOWCASE_ARGS:-}
echo
echo "=== the benchmark suite (python -m benchmarks ${quick[*]} ${BENCH_ARGS:-})"
"$py" -m benchmarks "${quick[@]}" ${BENCH_ARGS:-}
