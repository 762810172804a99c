"""The memoizing decorators: ``cached`` and ``alru_cache`` (a drop-in for async-lru's).

Cold code only: argument checks and function metadata. The decorated function is a C ``Memo``
(``aiofast._core``) whose calls, hits and single-flight bookkeeping never touch Python.
"""
import functools
import inspect
import math

from ._core import AlruCacheLoopResetWarning, Memo

__all__ = ["cached", "alru_cache", "AlruCacheLoopResetWarning"]

_MISSING = object()


def _check_maxsize(maxsize):
    if maxsize is not None and (not isinstance(maxsize, int) or isinstance(maxsize, bool)):
        raise TypeError(f"maxsize must be an int or None, got {type(maxsize).__name__}")


def _check_seconds(name, value):
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number or None, got {type(value).__name__}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


def _wrap(fn, maxsize, ttl, typed, key, timer, jitter, alru, is_async):
    # Memo applies functools.update_wrapper and the coroutine-function marks itself
    return Memo(fn, maxsize, ttl, typed, key, is_async, timer, jitter, alru)


def _is_async(fn):
    origin = fn
    while isinstance(origin, (functools.partial, functools.partialmethod)):
        origin = origin.func
    return inspect.iscoroutinefunction(origin)


def cached(maxsize=128, ttl=None, typed=False, *, key=None, timer=None):
    """Memoize an ``async def`` (or plain ``def``) function or method.

    ``@cached`` or ``@cached(maxsize=128, ttl=None, typed=False, key=None)``. Concurrent calls
    with the same arguments share one computation (single flight); exceptions and cancellations
    are never cached. Keys follow ``functools.lru_cache`` (``typed`` included) unless ``key``
    is given. A result expires ``ttl`` seconds after it was computed, by ``time.monotonic``
    (or ``timer``, a callable returning seconds).
    """
    if callable(maxsize) and not isinstance(maxsize, int):
        fn, maxsize = maxsize, 128
        return _wrap(fn, maxsize, None, False, None, None, None, False, _is_async(fn))
    _check_maxsize(maxsize)
    _check_seconds("ttl", ttl)
    if key is not None and not callable(key):
        raise TypeError("key must be callable")
    if key is not None and typed:
        raise ValueError("typed is ignored when a custom key callable is provided")
    if timer is not None and not callable(timer):
        raise TypeError("timer must be callable")

    def decorator(fn):
        if not callable(fn):
            raise TypeError(f"cached expects a callable, got {type(fn).__name__}")
        return _wrap(fn, maxsize, ttl, typed, key, timer, None, False, _is_async(fn))

    return decorator


def alru_cache(maxsize=128, typed=False, *, ttl=None, jitter=None, key=None):
    """A drop-in for ``async_lru.alru_cache``: bare (``@alru_cache``) or called.

    Same parameters and methods (``cache_info``, ``cache_clear``, ``cache_invalidate``,
    ``cache_contains``, ``cache_parameters``, ``cache_close``), on aiofast's C memoizer.
    """
    if maxsize is None or isinstance(maxsize, int):
        if jitter is not None and ttl is None:
            raise ValueError("jitter requires ttl to be set")
        if jitter is not None and jitter < 0:
            raise ValueError("jitter must be non-negative")
        if key is not None and not callable(key):
            raise TypeError("key must be callable")
        if key is not None and typed:
            raise ValueError("typed is ignored when a custom key callable is provided")
        _check_seconds("ttl", ttl)
        _check_seconds("jitter", jitter)
        return functools.partial(_alru_wrap, maxsize=maxsize, typed=typed, ttl=ttl,
                                 jitter=jitter, key=key)
    fn = maxsize
    if callable(fn) or hasattr(fn, "_make_unbound_method"):
        return _alru_wrap(fn, maxsize=128, typed=False, ttl=None, jitter=None, key=None)
    raise NotImplementedError(f"{fn!r} decorating is not supported")


def _alru_wrap(fn, *, maxsize, typed, ttl, jitter, key):
    if not _is_async(fn):
        raise RuntimeError(f"Coroutine function is required, got {fn!r}")
    if hasattr(fn, "_make_unbound_method"):
        fn = fn._make_unbound_method()
    return _wrap(fn, maxsize, ttl, typed, key, None, jitter, True, True)
