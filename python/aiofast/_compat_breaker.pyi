# Types of circuitbreaker's decorator: bare, it returns the wrapped function with its
# parameters and result type (BreakerFunction[P, R]); with arguments, a CircuitBreaker, whose
# __call__ does the same.
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from datetime import datetime
from typing import Any, ClassVar, TypeVar, overload

from typing_extensions import ParamSpec, Self

from . import _core
from ._core import BreakerFunction
from ._core import CircuitOpenError as CircuitOpenError, CircuitState as CircuitState

_P = ParamSpec("_P")
_R = TypeVar("_R")

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

CircuitBreakerError = CircuitOpenError
STATE_CLOSED: str
STATE_OPEN: str
STATE_HALF_OPEN: str

_Expected = (
    type[BaseException]
    | Iterable[type[BaseException]]
    | Callable[[type[BaseException], BaseException], bool]
)

class CircuitBreaker(_core.CircuitBreaker):
    """circuitbreaker's CircuitBreaker on aiofast's breaker."""
    FAILURE_THRESHOLD: ClassVar[int]
    RECOVERY_TIMEOUT: ClassVar[float]
    EXPECTED_EXCEPTION: ClassVar[Any]
    FALLBACK_FUNCTION: ClassVar[Callable[..., Any] | None]
    is_failure: Callable[[type[BaseException], BaseException | None], bool]
    def __new__(
        cls,
        failure_threshold: int | None = None,
        recovery_timeout: float | None = None,
        expected_exception: _Expected | None = None,
        name: str | None = None,
        fallback_function: Callable[..., Any] | None = None,
        **options: Any,
    ) -> Self: ...
    def __init__(self, *args: Any, **kwargs: Any) -> None: ...
    def decorate(self, function: Callable[_P, _R]) -> Callable[_P, _R]: ...
    def call(self, func: Callable[..., _R], *args: Any, **kwargs: Any) -> _R: ...  # type: ignore[override]
    def call_generator(self, func: Callable[..., Iterable[_R]], *args: Any, **kwargs: Any) -> Iterator[_R]: ...
    async def call_async(self, func: Callable[..., Awaitable[_R]], *args: Any, **kwargs: Any) -> _R: ...
    def call_async_generator(self, func: Callable[..., AsyncIterator[_R]], *args: Any, **kwargs: Any) -> AsyncIterator[_R]: ...
    def reset(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    @property
    def opened(self) -> bool: ...
    @property
    def open_remaining(self) -> int: ...
    @property
    def open_until(self) -> datetime: ...
    @property
    def last_failure(self) -> BaseException | None: ...
    @property
    def fallback_function(self) -> Callable[..., Any] | None: ...

class CircuitBreakerMonitor:
    circuit_breakers: ClassVar[dict[str | None, CircuitBreaker]]
    @classmethod
    def register(cls, circuit_breaker: CircuitBreaker) -> None: ...
    @classmethod
    def all_closed(cls) -> bool: ...
    @classmethod
    def get_circuits(cls) -> Iterable[CircuitBreaker]: ...
    @classmethod
    def get(cls, name: str) -> CircuitBreaker | None: ...
    @classmethod
    def get_open(cls) -> Iterator[CircuitBreaker]: ...
    @classmethod
    def get_closed(cls) -> Iterator[CircuitBreaker]: ...

@overload
def circuit(failure_threshold: Callable[_P, _R], /) -> BreakerFunction[_P, _R]: ...
@overload
def circuit(
    failure_threshold: int | None = None,
    recovery_timeout: float | None = None,
    expected_exception: _Expected | None = None,
    name: str | None = None,
    fallback_function: Callable[..., Any] | None = None,
    cls: type[CircuitBreaker] = ...,
) -> CircuitBreaker: ...
