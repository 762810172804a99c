"""No leaks: every scenario in tests/leakcheck.py (one per family, every public type), run
thousands of times in a fresh interpreter on each loop, leaves object counts, the refcount of
every aiofast type and traced memory flat."""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import leakcheck  # noqa: E402


@pytest.mark.parametrize("loop_name", sorted(leakcheck.LOOPS))
@pytest.mark.parametrize("name", sorted(leakcheck.SCENARIOS))
def test_no_leaks(name, loop_name):
    proc = subprocess.run([sys.executable, os.path.join(HERE, "leakcheck.py"), name, loop_name],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    # the smallest growth of three later segments of 400 cycles (the interpreter's caches
    # settle slowly and allocator effects are steps; a leak is a slope and shows in each): a few
    # objects of slack for interpreter caches; a leak of one object (or 24 bytes) per cycle
    # shows as 400 objects (9.6 KB)
    assert res["objects"] < 50, res
    assert res["objects_first_segment"] < 200, res
    assert res["type_refs"] == {}, res
    assert res["traced_bytes"] < 8 * 1024, res
    assert res["mappings"] < 50, res
