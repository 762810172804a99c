# Types of circuitbreaker's decorator: bare, it returns the wrapped function with its
# parameters and result type (BreakerFunction[P, R]); with arguments, a CircuitBreaker, whose
# __call__ does the same.
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, overload

from typing_extensions import ParamSpec

from ._core import BreakerFunction, CircuitBreaker as CircuitBreaker
from ._core import CircuitOpenError as CircuitOpenError, CircuitState as CircuitState

_P = ParamSpec("_P")
_R = TypeVar("_R")

__all__ = ["circuit", "CircuitBreakerError", "CircuitBreaker", "CircuitOpenError", "CircuitState"]

CircuitBreakerError = CircuitOpenError

_Expected = (
    type[BaseException]
    | Iterable[type[BaseException]]
    | Callable[[type[BaseException], BaseException], bool]
)

@overload
def circuit(failure_threshold: Callable[_P, _R], /) -> BreakerFunction[_P, _R]: ...
@overload
def circuit(
    failure_threshold: int | None = None,
    recovery_timeout: float | None = None,
    expected_exception: _Expected | None = None,
    name: str | None = None,
    fallback_function: Callable[..., Any] | None = None,
) -> CircuitBreaker: ...
