"""CPython's own tests for Lock, Event, Semaphore, BoundedSemaphore (and Condition and Barrier,
which build on Lock), run with aiofast.install() in effect, on the Python running the suite.

Every test must pass, and no test may be skipped.
"""
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _short(test_id):
    # "test.test_asyncio.test_locks.EventTests.test_repr" -> "test_locks.EventTests.test_repr"
    return ".".join(test_id.split(".")[2:])


def run_suite(*modules):
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "cpython_suite.py"), *modules],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONWARNINGS": "default"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_cpython_lock_tests_pass_under_install():
    res = run_suite("test.test_asyncio.test_locks", "test.test_asyncio.test_pep492")
    assert res["ran"] > 50
    assert "aiofast" in res["installed"][0]
    failed = {_short(t): tb for t, tb in {**res["failures"], **res["errors"]}.items()}
    assert not failed, "\n\n".join(f"{k}\n{v}" for k, v in failed.items())
    assert res["skipped"] == {}, res["skipped"]
    assert res["unexpected_successes"] == []
