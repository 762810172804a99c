"""Cold Python parts of the circuit breaker: the ``circuit`` drop-in, generator wrappers,
decoration helpers and the error reporter. The hot paths live in C (src/breaker.c).

``circuit`` is a drop-in for the ``circuitbreaker`` package's decorator::

    from aiofast import circuit          # instead of: from circuitbreaker import circuit

    @circuit                               # or @circuit(failure_threshold=3, recovery_timeout=10, ...)
    async def fetch(url): ...

It returns a ``circuitbreaker``-compatible ``CircuitBreaker`` (this module's: a subclass of
``aiofast.CircuitBreaker`` with circuitbreaker's API on top: ``opened``, ``closed``,
``open_remaining``, ``open_until``, ``last_failure``, ``failure_count`` counted as
circuitbreaker counts it, ``is_failure``, ``decorate``, ``call``/``call_generator``/
``call_async``/``call_async_generator``, ``str()`` as the name, class attributes
``FAILURE_THRESHOLD`` & co. for ``circuit(cls=...)``, registration in ``CircuitBreakerMonitor``).
The state machine is aiofast's: one probe at a time in half-open (circuitbreaker lets every
caller through), cancellation is neither success nor failure, monotonic clock.
"""
import functools
import inspect
import logging
import math
import sys
from datetime import datetime, timedelta, timezone

from . import _core
from ._core import CircuitOpenError, CircuitState

__all__ = [
    "circuit",
    "CircuitBreaker",
    "CircuitBreakerError",
    "CircuitBreakerMonitor",
    "CircuitOpenError",
    "CircuitState",
    "STATE_CLOSED",
    "STATE_OPEN",
    "STATE_HALF_OPEN",
]

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


# The C breaker never imports this module: it is handed the helpers above (its cold parts:
# logging an error, a decorated function's kind, generator wrappers) here, once, when the
# package is imported.
_core._breaker_cold(sys.modules[__name__])


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


STATE_CLOSED = "closed"
STATE_OPEN = "open"
STATE_HALF_OPEN = "half_open"


def _failure_predicate(expected_exception):
    """circuitbreaker's is_failure(exc_type, exc) for its expected_exception."""
    if inspect.isclass(expected_exception) and issubclass(expected_exception, Exception):
        types = (expected_exception,)
    else:
        try:
            iter(expected_exception)
        except TypeError:
            if not callable(expected_exception) or inspect.isclass(expected_exception):
                raise ValueError("expected_exception does not look like a predicate") from None
            return expected_exception
        if isinstance(expected_exception, (str, bytes)):
            raise ValueError("expected_exception cannot be a string. Did you mean name?")
        types = tuple(expected_exception)

    def matches_types(thrown_type, _):
        return issubclass(thrown_type, types)

    return matches_types


class CircuitBreakerMonitor:
    """circuitbreaker's registry of the breakers that decorated something, by name."""

    circuit_breakers: dict = {}

    @classmethod
    def register(cls, circuit_breaker):
        cls.circuit_breakers[circuit_breaker.name] = circuit_breaker

    @classmethod
    def all_closed(cls):
        return len(list(cls.get_open())) == 0

    @classmethod
    def get_circuits(cls):
        return cls.circuit_breakers.values()

    @classmethod
    def get(cls, name):
        return cls.circuit_breakers.get(name)

    @classmethod
    def get_open(cls):
        for breaker in cls.get_circuits():
            if breaker.opened:
                yield breaker

    @classmethod
    def get_closed(cls):
        for breaker in cls.get_circuits():
            if breaker.closed:
                yield breaker


class CircuitBreaker(_core.CircuitBreaker):
    """circuitbreaker's ``CircuitBreaker``, on aiofast's breaker: subclass it and set
    ``FAILURE_THRESHOLD``, ``RECOVERY_TIMEOUT``, ``EXPECTED_EXCEPTION`` or
    ``FALLBACK_FUNCTION`` for ``circuit(cls=...)``, as with circuitbreaker."""

    FAILURE_THRESHOLD = 5
    RECOVERY_TIMEOUT = 30
    EXPECTED_EXCEPTION = Exception
    FALLBACK_FUNCTION = None

    def __new__(cls, failure_threshold=None, recovery_timeout=None, expected_exception=None,
                name=None, fallback_function=None, **options):
        """circuitbreaker's arguments; aiofast.CircuitBreaker's other keyword-only options
        (clock=, success_threshold=, exclude=, ...) are accepted too."""
        if not expected_exception:
            # the class's own EXPECTED_EXCEPTION (from its __dict__: a plain function there is a
            # predicate, not a method), else CircuitBreaker's
            expected_exception = cls.__dict__.get("EXPECTED_EXCEPTION", Exception)
        is_failure = _failure_predicate(expected_exception)
        self = super().__new__(
            cls,
            failure_threshold or cls.FAILURE_THRESHOLD,
            recovery_timeout or cls.RECOVERY_TIMEOUT,
            expected_exception=_adapt_expected(expected_exception),
            name=name,
            fallback=fallback_function or cls.FALLBACK_FUNCTION,
            **options,
        )
        self._peer_mode()
        self.is_failure = is_failure
        return self

    def __init__(self, *args, **kwargs):
        pass  # all done by __new__ (aiofast.CircuitBreaker is configured there)

    def __call__(self, fn, /):
        return self.decorate(fn)

    def decorate(self, function):
        """Guard ``function`` with this breaker and register it in CircuitBreakerMonitor."""
        if type(self).opened is not _OPENED:
            # `opened` was replaced on the class: ask it before each call, as circuitbreaker does
            super().__call__(function)  # (names the breaker after function, as usual)
            wrapper = _decorate_asking_opened(self, function)
        else:
            wrapper = super().__call__(function)
        CircuitBreakerMonitor.register(self)
        return wrapper

    def call(self, func, *args, **kwargs):
        """Call ``func`` under the breaker (circuitbreaker's plain call)."""
        with self:
            return func(*args, **kwargs)

    def call_generator(self, func, *args, **kwargs):
        """Iterate ``func(*args, **kwargs)`` under the breaker."""
        with self:
            yield from func(*args, **kwargs)

    async def call_async(self, func, *args, **kwargs):
        """Await ``func(*args, **kwargs)`` under the breaker."""
        with self:
            return await func(*args, **kwargs)

    async def call_async_generator(self, func, *args, **kwargs):
        """Iterate ``func(*args, **kwargs)`` asynchronously under the breaker."""
        with self:
            async for item in func(*args, **kwargs):
                yield item

    def reset(self):
        """Close the circuit and clear its counts."""
        self.close()

    @property
    def closed(self):
        return self.state == STATE_CLOSED

    opened = property(lambda self: _opened(self), doc="True while the circuit is open.")

    @property
    def open_remaining(self):
        """Whole seconds until the circuit may recover (negative once it may)."""
        remain = self._open_remaining
        return math.ceil(remain) if remain > 0 else math.floor(remain)

    @property
    def open_until(self):
        """The approximate datetime (UTC) when the circuit may recover."""
        return datetime.now(timezone.utc) + timedelta(seconds=self.open_remaining)

    @property
    def failure_count(self):
        """Failures since the last success, whatever the state (circuitbreaker's count)."""
        return self._failure_streak

    @property
    def last_failure(self):
        """The exception of the last failure, until a success."""
        return self._last_failure

    @property
    def fallback_function(self):
        return self.fallback

    def __str__(self):
        return self.name or "unnamed_CircuitBreaker"


def _opened(self):
    return self.state == STATE_OPEN


_OPENED = CircuitBreaker.opened


def _decorate_asking_opened(breaker, function):
    """circuitbreaker's own wrappers, for a class whose `opened` was replaced."""
    fallback = breaker.fallback
    if inspect.isasyncgenfunction(function):

        @functools.wraps(function)
        async def gen_awrapper(*args, **kwargs):
            if breaker.opened:
                if fallback:
                    async for item in fallback(*args, **kwargs):
                        yield item
                    return
                raise CircuitBreakerError(str(breaker))
            async for item in breaker.call_async_generator(function, *args, **kwargs):
                yield item

        return gen_awrapper
    if inspect.iscoroutinefunction(function):

        @functools.wraps(function)
        async def awrapper(*args, **kwargs):
            if breaker.opened:
                if fallback:
                    return await fallback(*args, **kwargs)
                raise CircuitBreakerError(str(breaker))
            return await breaker.call_async(function, *args, **kwargs)

        return awrapper
    if inspect.isgeneratorfunction(function):

        @functools.wraps(function)
        def gen_wrapper(*args, **kwargs):
            if breaker.opened:
                if fallback:
                    yield from fallback(*args, **kwargs)
                    return
                raise CircuitBreakerError(str(breaker))
            yield from breaker.call_generator(function, *args, **kwargs)

        return gen_wrapper

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        if breaker.opened:
            if fallback:
                return fallback(*args, **kwargs)
            raise CircuitBreakerError(str(breaker))
        return breaker.call(function, *args, **kwargs)

    return wrapper


def circuit(failure_threshold=None, recovery_timeout=None, expected_exception=None, name=None,
            fallback_function=None, cls=CircuitBreaker):
    """Drop-in for ``circuitbreaker.circuit``: usable bare (``@circuit``) or with arguments.

    Returns (or, bare, applies) a ``cls`` instance (this module's ``CircuitBreaker``, an
    ``aiofast.CircuitBreaker``, or a subclass) with failure_threshold (default 5),
    recovery_timeout (default 30 s), expected_exception (a type, an iterable of types or a
    predicate ``(exc_type, exc) -> bool``), name (default: the decorated function's qualified
    name) and fallback_function (called with the call's arguments instead of raising).
    """
    if callable(failure_threshold) and not isinstance(failure_threshold, int):
        return cls().decorate(failure_threshold)
    return cls(
        failure_threshold=failure_threshold,
        recovery_timeout=recovery_timeout,
        expected_exception=expected_exception,
        name=name,
        fallback_function=fallback_function,
    )
