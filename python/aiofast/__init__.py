"""aiofast: fast, correct asyncio concurrency primitives, in C.

Drop-ins for asyncio's Semaphore, BoundedSemaphore, Lock, Event, Queue, PriorityQueue and
LifoQueue; TokenBucket (and AsyncLimiter), CircuitBreaker (and circuit), LRUCache, TTLCache,
cached (and alru_cache): see the README.
``aiofast.install()`` puts them in place of asyncio's, ``aiofast.uninstall()`` restores asyncio's.
"""
import asyncio as _asyncio

from ._compat_breaker import circuit
from ._compat_cache import AlruCacheLoopResetWarning, alru_cache, cached
from ._compat_limiter import AsyncLimiter
from ._core import (
    BoundedSemaphore,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    Event,
    LifoQueue,
    Lock,
    LRUCache,
    PriorityQueue,
    Queue,
    QueueShutDown,
    Semaphore,
    SharedSegmentError,
    SharedTokenBucket,
    TokenBucket,
    TTLCache,
    shared_unlink,
)

__version__ = "0.1.0"

__all__ = [
    "alru_cache",
    "AlruCacheLoopResetWarning",
    "AsyncLimiter",
    "BoundedSemaphore",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitState",
    "cached",
    "Event",
    "LifoQueue",
    "Lock",
    "LRUCache",
    "PriorityQueue",
    "Queue",
    "QueueShutDown",
    "Semaphore",
    "SharedSegmentError",
    "SharedTokenBucket",
    "shared_unlink",
    "circuit",
    "TTLCache",
    "TokenBucket",
    "install",
    "uninstall",
    "installed",
]

# name -> (our class, the modules whose attribute install() replaces)
_REPLACEMENTS = {
    "Semaphore": (Semaphore, ("asyncio", "asyncio.locks")),
    "BoundedSemaphore": (BoundedSemaphore, ("asyncio", "asyncio.locks")),
    "Lock": (Lock, ("asyncio", "asyncio.locks")),
    "Event": (Event, ("asyncio", "asyncio.locks")),
    "Queue": (Queue, ("asyncio", "asyncio.queues")),
    "PriorityQueue": (PriorityQueue, ("asyncio", "asyncio.queues")),
    "LifoQueue": (LifoQueue, ("asyncio", "asyncio.queues")),
}

_originals: dict = {}


def install():
    """Replace asyncio's primitives with aiofast's, in ``asyncio`` and its submodules.

    Code that looks the class up at call time (``asyncio.Lock()``) gets ours; a name imported
    before (``from asyncio import Lock``) keeps asyncio's. Idempotent; ``uninstall()`` undoes it.
    """
    import importlib

    for name, (ours, modnames) in _REPLACEMENTS.items():
        for modname in modnames:
            mod = importlib.import_module(modname)
            key = (modname, name)
            current = getattr(mod, name)
            if key not in _originals:
                if current is ours:
                    continue
                _originals[key] = current
            setattr(mod, name, ours)


def uninstall():
    """Restore asyncio's own classes. Idempotent."""
    import importlib

    for (modname, name), original in list(_originals.items()):
        setattr(importlib.import_module(modname), name, original)
        del _originals[(modname, name)]


def installed():
    """True while install() is in effect."""
    return bool(_originals)
