"""Drop-ins under the peers' own module names: change one import.

    from aiofast.compat.aiolimiter import AsyncLimiter          # was: from aiolimiter import ...
    from aiofast.compat.circuitbreaker import circuit, CircuitBreaker, CircuitBreakerError
    from aiofast.compat.async_lru import alru_cache             # was: from async_lru import ...
    from aiofast.compat.cachetools import LRUCache, TTLCache    # was: from cachetools import ...

Each module has the public names of its peer that aiofast implements, with the peer's behaviour
(its own test suite runs against them in CI). What still differs is listed in the README.
"""
