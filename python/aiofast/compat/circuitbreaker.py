"""The circuitbreaker package's public names, on aiofast's breaker: ``circuit``,
``CircuitBreaker`` (the class ``circuit(cls=...)`` takes and subclasses extend),
``CircuitBreakerError``, ``CircuitBreakerMonitor`` and the ``STATE_*`` constants."""
from .._compat_breaker import STATE_CLOSED as STATE_CLOSED
from .._compat_breaker import STATE_HALF_OPEN as STATE_HALF_OPEN
from .._compat_breaker import STATE_OPEN as STATE_OPEN
from .._compat_breaker import CircuitBreaker as CircuitBreaker
from .._compat_breaker import CircuitBreakerError as CircuitBreakerError
from .._compat_breaker import CircuitBreakerMonitor as CircuitBreakerMonitor
from .._compat_breaker import circuit as circuit

__all__ = ["circuit", "CircuitBreaker", "CircuitBreakerError", "CircuitBreakerMonitor",
           "STATE_CLOSED", "STATE_OPEN", "STATE_HALF_OPEN"]
