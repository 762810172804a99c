"""aiofast's benchmark suite: aiofast against asyncio and the peers, side by side.

    python -m benchmarks [--quick] [--only locks,queue] [--save]     (from the repository root)
    python path/to/benchmarks [...]                                  (from anywhere)

It measures the aiofast installed in the running interpreter (`pip install .` first).
"""
