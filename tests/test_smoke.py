"""Every family's create / use / cancel / destroy cycle (the scenarios of tests/leakcheck.py), run
in-process a few times on each virtual-clock loop. It is the quick tour of every public type that
valgrind (scripts/valgrind.sh) and the sanitizers run; here it checks that each scenario finishes
with its own assertions met and leaves no task behind (no waiter stranded)."""
import asyncio
import gc
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import leakcheck  # noqa: E402


@pytest.mark.parametrize("loop_name", sorted(leakcheck.LOOPS))
@pytest.mark.parametrize("name", sorted(leakcheck.SCENARIOS))
def test_scenario_runs_clean(name, loop_name):
    loop = leakcheck.LOOPS[loop_name]()
    try:
        for _ in range(3):
            loop.run_until_complete(leakcheck.SCENARIOS[name]())
            left = [t for t in asyncio.all_tasks(loop) if not t.done()]
            assert left == []
        gc.collect()
        loop.run_until_complete(asyncio.sleep(0))
        assert [t for t in asyncio.all_tasks(loop) if not t.done()] == []
    finally:
        loop.close()
