#!/usr/bin/env bash
# The main job: install aiofast (Python 3.11 by default), run the end-to-end demo, then the
# benchmarks against asyncio and the peers, side by side. Results land in benchmarks/results/.
#   PY=3.12 bash scripts/demo.sh            # another Python
#   BENCH_ARGS=--quick bash scripts/demo.sh # a shorter benchmark run
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_pythons.sh
py=$(make_venv "${PY:-3.11}" bench)
"$py" examples/demo.py
"$py" benchmarks/run_all.py ${BENCH_ARGS:-}
