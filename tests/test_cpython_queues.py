"""CPython's own tests for Queue, PriorityQueue and LifoQueue (test.test_asyncio.test_queues,
shipped with each Python), run with aiofast.install() in effect, on the Python running the suite.

Every test must pass except the ones listed in EXPECTED_DIVERGENCES, each with its reason; the
set of failing tests must equal that list exactly (a new failure fails, and so does a listed test
that starts passing), and no test may be skipped. The list is empty on 3.10-3.13: even
test_get_with_putters, which appends a bare loop future to q._putters and expects get() to wake
it, passes, because _getters/_putters are live views of the C waiter lists.
"""
from helpers import cpython_test_name, run_cpython_suite

# test id suffix -> why aiofast cannot pass it
EXPECTED_DIVERGENCES = {}


def test_cpython_queue_tests_pass_under_install():
    res = run_cpython_suite("test.test_asyncio.test_queues", "cpython_queue_probe")
    # 3.10: 45 tests, 3.11/3.12: 44, 3.13: 59 (shutdown), plus the 2 probes
    assert res["ran"] >= 46, res["ran"]
    failed = {cpython_test_name(t): tb for t, tb in {**res["failures"], **res["errors"]}.items()}
    unexpected = {k: v for k, v in failed.items() if k not in EXPECTED_DIVERGENCES}
    assert not unexpected, "\n\n".join(f"{k}\n{v}" for k, v in unexpected.items())
    assert set(failed) == set(EXPECTED_DIVERGENCES), (
        "listed divergences that now pass: "
        + ", ".join(sorted(set(EXPECTED_DIVERGENCES) - set(failed)))
    )
    assert res["skipped"] == {}, res["skipped"]
    assert res["unexpected_successes"] == []
