"""Shared test fixtures.

* Every test marked ``@pytest.mark.asyncio`` runs twice: on asyncio's default loop and on uvloop
  (pytest-asyncio's ``pytest_asyncio_loop_factories`` hook). A missing uvloop is an error, never a
  skip: CI must run both.
* ``impl``: the implementation under test. Tests of drop-ins take it and run against aiofast and
  against asyncio itself (the oracle): a test asyncio fails does not describe asyncio.
"""
import asyncio
import gc
import os

import pytest
import uvloop  # noqa: F401  (an ImportError here fails the run: uvloop is required)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import oracle_fixture

# Hypothesis profiles for the fuzzers (tests/test_fuzz_*.py, the state machines), picked with
# HYPOTHESIS_PROFILE: "ci" (the default) keeps the whole suite fast; "small" is for the
# sanitizer runs (scripts/asan.sh), "tiny" for valgrind (50x slower); "thorough" is for a local
# hunt: HYPOTHESIS_PROFILE=thorough pytest tests/test_fuzz_locks.py
_FUZZ = dict(deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
# "ci" is derandomized: the same examples every run, so CI judges the code, not the draw; the
# other profiles explore (run them locally to hunt)
settings.register_profile("ci", max_examples=100, stateful_step_count=40, derandomize=True,
                          **_FUZZ)
settings.register_profile("small", max_examples=30, stateful_step_count=30, **_FUZZ)
settings.register_profile("tiny", max_examples=5, stateful_step_count=15, **_FUZZ)
settings.register_profile("thorough", max_examples=3000, stateful_step_count=80, **_FUZZ)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session", autouse=True)
def _hypothesis_prng_registered():
    """Hypothesis registers its own PRNG at its first test in a thread, and warns (an error here)
    unless the gc can see who holds it (gc.get_referrers). From 3.14 the gc does not see the
    thread-local dict that holds it once that dict is frozen (_collect_only_what_the_test_made
    below), so the first hypothesis test of each process failed there. One example at the start
    of the session, before any freeze, registers it with its holder in plain view."""
    @given(st.none())
    @settings(max_examples=1, database=None, derandomize=True)
    def register(_):
        pass

    register()


def pytest_asyncio_loop_factories(config, item):
    factories = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    # Virtual-clock loops only for tests that name them:
    # @pytest.mark.asyncio(loop_factories=["virtual-asyncio", "virtual-uvloop"])
    marker = item.get_closest_marker("asyncio")
    if marker is not None and marker.kwargs.get("loop_factories"):
        from virtual_time import VIRTUAL_LOOP_FACTORIES

        factories.update(VIRTUAL_LOOP_FACTORIES)
    return factories


impl = oracle_fixture("locks", "impl",
                      "The classes under test: aiofast's, or asyncio's (the oracle).")


@pytest.fixture(autouse=True)
def _collect_only_what_the_test_made():
    """Each test runs with everything alive before it in the gc's permanent generation
    (gc.freeze), so a collection inside the test walks only what the test made. The state
    machines collect at every step (to fire the __del__ hooks of dropped objects); without this,
    each of those collections walks every object the earlier tests of the process left alive,
    which made one machine five times slower late in a run than alone."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


# ------------------------------------------------------------------ a real redis-server

@pytest.fixture(scope="session")
def server():
    """One redis-server for the session's Redis tests (tests/redis_server.py)."""
    from redis_server import RedisServer
    srv = RedisServer().start()
    yield srv
    srv.close()


@pytest.fixture
def own_server():
    """A redis-server of the test's own, to kill, stop and restart."""
    from redis_server import RedisServer
    srv = RedisServer().start()
    yield srv
    srv.close()


@pytest.fixture
def sync(server):
    """A synchronous redis-py client of the session's server."""
    import redis
    c = redis.Redis.from_url(server.url)
    yield c
    c.close()
