"""CPython's own tests for Lock, Event, Semaphore, BoundedSemaphore (and Condition and Barrier,
which build on Lock), run with aiofast.install() in effect, on the Python running the suite.

Every test must pass, and no test may be skipped.
"""
from helpers import cpython_test_name, run_cpython_suite


def test_cpython_lock_tests_pass_under_install():
    res = run_cpython_suite("test.test_asyncio.test_locks", "test.test_asyncio.test_pep492")
    assert res["ran"] > 50
    assert "aiofast" in res["installed"][0]
    failed = {cpython_test_name(t): tb for t, tb in {**res["failures"], **res["errors"]}.items()}
    assert not failed, "\n\n".join(f"{k}\n{v}" for k, v in failed.items())
    assert res["skipped"] == {}, res["skipped"]
    assert res["unexpected_successes"] == []
