"""Cold Python parts of the circuit breaker: the ``circuit`` drop-in, generator wrappers,
decoration helpers and the error reporter. The hot paths live in C (src/breaker.c).

``circuit`` is a drop-in for the ``circuitbreaker`` package's decorator::

    from aiofast import circuit          # instead of: from circuitbreaker import circuit

    @circuit                               # or @circuit(failure_threshold=3, recovery_timeout=10, ...)
    async def fetch(url): ...

It returns an ``aiofast.CircuitBreaker`` (shared by every function it decorates), so the state,
counts and half-open probing are aiofast's: one probe at a time in half-open (circuitbreaker lets
every caller through), cancellation is neither success nor failure, monotonic clock.
"""
import functools
import inspect
import logging

from ._core import CircuitBreaker, CircuitOpenError, CircuitState

__all__ = ["circuit", "CircuitBreakerError", "CircuitBreaker", "CircuitOpenError", "CircuitState"]

logger = logging.getLogger("aiofast.breaker")

#: The name circuitbreaker uses for its rejection error; ours is CircuitOpenError.
CircuitBreakerError = CircuitOpenError

_SYNC, _ASYNC, _GEN, _ASYNCGEN = 0, 1, 2, 3

try:
    from asyncio.coroutines import _is_coroutine  # type: ignore[attr-defined,unused-ignore]
except ImportError:  # pragma: no cover
    _is_coroutine = None


def _report_error(breaker, what, culprit, exc):
    """Called from C when a listener, a predicate or a clock= raised: log it, carry on."""
    logger.error(
        "CircuitBreaker %r: %s %r raised %s: %s",
        getattr(breaker, "name", None), what, culprit, type(exc).__name__, exc,
        exc_info=(type(exc), exc, exc.__traceback__),
    )


def _fn_kind(fn):
    """How a decorated callable is guarded: 0 plain, 1 async, 2 generator, 3 async generator."""
    if inspect.isasyncgenfunction(fn):
        return _ASYNCGEN
    if inspect.isgeneratorfunction(fn):
        return _GEN
    if inspect.iscoroutinefunction(fn) or (
        _is_coroutine is not None and getattr(fn, "_is_coroutine", None) is _is_coroutine
    ):
        return _ASYNC
    return _SYNC


def _finish_wrapper(wrapper, fn, is_async):
    """functools.wraps for the C wrapper, plus the coroutine-function markers."""
    functools.update_wrapper(wrapper, fn)
    if is_async and not inspect.iscoroutinefunction(wrapper):
        # fn is not an `async def` (an object marked as a coroutine function): mark ours too
        if hasattr(inspect, "markcoroutinefunction"):
            inspect.markcoroutinefunction(wrapper)
        if _is_coroutine is not None:
            wrapper._is_coroutine = _is_coroutine


def _wrap_generator(breaker, fn, kind):
    """Guard a generator function: the whole iteration is one call."""
    fallback = breaker.fallback
    if kind == _GEN:

        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                ticket = breaker._acquire()
            except CircuitOpenError:
                if fallback is None:
                    raise
                return (yield from fallback(*args, **kwargs))
            try:
                result = yield from fn(*args, **kwargs)
            except BaseException as exc:
                breaker._release(ticket, exc)
                raise
            breaker._release(ticket, None)
            return result

        gen_wrapper.breaker = breaker
        return gen_wrapper

    @functools.wraps(fn)
    async def agen_wrapper(*args, **kwargs):
        try:
            ticket = breaker._acquire()
        except CircuitOpenError:
            if fallback is None:
                raise
            async for item in fallback(*args, **kwargs):
                yield item
            return
        try:
            async for item in fn(*args, **kwargs):
                yield item
        except BaseException as exc:
            breaker._release(ticket, exc)
            raise
        breaker._release(ticket, None)

    agen_wrapper.breaker = breaker
    return agen_wrapper


def _adapt_expected(expected_exception):
    """circuitbreaker's expected_exception: a type, an iterable of types, or a predicate
    ``(exc_type, exc) -> bool``; ours takes a type, a tuple, or ``exc -> bool``."""
    if expected_exception is None:
        return Exception
    if isinstance(expected_exception, type):
        return expected_exception
    if isinstance(expected_exception, (str, bytes)):
        raise ValueError("expected_exception cannot be a string. Did you mean name?")
    try:
        return tuple(expected_exception)
    except TypeError:
        pass
    if not callable(expected_exception):
        raise ValueError("expected_exception does not look like a predicate")
    predicate = expected_exception

    def is_failure(exc):
        return predicate(type(exc), exc)

    return is_failure


def circuit(failure_threshold=None, recovery_timeout=None, expected_exception=None, name=None,
            fallback_function=None):
    """Drop-in for ``circuitbreaker.circuit``: usable bare (``@circuit``) or with arguments.

    Returns (or, bare, applies) an ``aiofast.CircuitBreaker`` with failure_threshold (default
    5), recovery_timeout (default 30 s), expected_exception (a type, an iterable of types or a
    predicate ``(exc_type, exc) -> bool``), name (default: the decorated function's qualified
    name) and fallback_function (called with the call's arguments instead of raising).
    """
    if callable(failure_threshold) and not isinstance(failure_threshold, int):
        return CircuitBreaker()(failure_threshold)
    # circuitbreaker takes any false value (None, 0) for "the default"
    return CircuitBreaker(
        failure_threshold or 5,
        recovery_timeout or 30.0,
        expected_exception=_adapt_expected(expected_exception),
        name=name,
        fallback=fallback_function,
    )

