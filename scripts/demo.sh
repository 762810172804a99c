#!/usr/bin/env bash
# The main job: install aiofast (Python 3.11 by default), run the end-to-end demo, then the
# benchmarks against asyncio and the peers, side by side. Results land in benchmarks/results/.
#   PY=3.12 bash scripts/demo.sh            # another Python (3.14, 3.15: in scripts/newpython.sh's chroot)
#   BENCH_ARGS=--quick bash scripts/demo.sh # a shorter benchmark run
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_pythons.sh
if chroot_only "${PY:-3.11}"; then
    # a Python only scripts/newpython.sh's chroot has: the demo and benchmarks run there, and
    # their results come back to benchmarks/results/
    v=${PY//./}
    PY=${PY} run_in_chroot "" bash scripts/demo.sh
    bash scripts/newpython.sh fetch "benchmarks/results/*-py$v.json"
    exit 0
fi
py=$(make_venv "${PY:-3.11}" bench)
"$py" examples/demo.py
"$py" benchmarks/run_all.py ${BENCH_ARGS:-}
