"""aiofast.compat.<peer>: the import a peer's user changes. Each module's names are names of the
peer's own public API (so the changed import keeps working code working) and are aiofast's
drop-ins (so the change does something); the peers' suites run against these modules
(scripts/peers.sh)."""
import importlib

import pytest

import aiofast
from aiofast import _compat_breaker, _compat_cache, _compat_limiter

EXPECTED = {
    "aiolimiter": {"AsyncLimiter": _compat_limiter.AsyncLimiter},
    "circuitbreaker": {
        "circuit": _compat_breaker.circuit,
        "CircuitBreaker": _compat_breaker.CircuitBreaker,
        "CircuitBreakerError": aiofast.CircuitOpenError,
        "CircuitBreakerMonitor": _compat_breaker.CircuitBreakerMonitor,
        "STATE_CLOSED": "closed", "STATE_OPEN": "open", "STATE_HALF_OPEN": "half_open",
    },
    "async_lru": {"alru_cache": _compat_cache.alru_cache,
                  "AlruCacheLoopResetWarning": _compat_cache.AlruCacheLoopResetWarning},
    "cachetools": {"LRUCache": aiofast.LRUCache, "TTLCache": aiofast.TTLCache},
}


@pytest.mark.parametrize("peer", sorted(EXPECTED))
def test_compat_module_is_the_peers_api_on_aiofast(peer):
    ours = importlib.import_module(f"aiofast.compat.{peer}")
    theirs = importlib.import_module(peer)
    assert sorted(ours.__all__) == sorted(EXPECTED[peer])
    for name, value in EXPECTED[peer].items():
        assert getattr(ours, name) is value or getattr(ours, name) == value
        # a name of the peer's public API, of the same kind
        assert hasattr(theirs, name), name
        assert isinstance(getattr(ours, name), type) == isinstance(getattr(theirs, name), type)
        if isinstance(value, str):
            assert value == getattr(theirs, name)


@pytest.mark.parametrize("module", ["aiofast.compat.circuitbreaker", "circuitbreaker"])
def test_compat_breaker_class_with_cls(module):
    # the same code against the peer (the oracle) and against our module
    cb = importlib.import_module(module)
    CircuitBreaker, circuit = cb.CircuitBreaker, cb.circuit

    class MyBreaker(CircuitBreaker):
        FAILURE_THRESHOLD = 2
        RECOVERY_TIMEOUT = 30

    @circuit(cls=MyBreaker)
    def f(x):
        raise ValueError(x)

    for i in range(2):
        with pytest.raises(ValueError):
            f(i)
    opened = [b for b in cb.CircuitBreakerMonitor.get_open() if isinstance(b, MyBreaker)]
    assert len(opened) == 1 and opened[0].opened and opened[0].failure_count == 2
    with pytest.raises(cb.CircuitBreakerError):
        f(3)
