# Types of the memoizing decorators: the decorated function keeps its parameters and result
# type (a Memo[P, R] calls like a Callable[P, R]).
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from typing import Any, TypeVar, overload

from typing_extensions import ParamSpec

from ._core import Memo

_P = ParamSpec("_P")
_R = TypeVar("_R")

__all__ = ["cached", "alru_cache"]

@overload
def cached(maxsize: Callable[_P, _R], /) -> Memo[_P, _R]: ...
@overload
def cached(
    maxsize: int | None = 128,
    ttl: float | None = None,
    typed: bool = False,
    *,
    key: Callable[..., Hashable] | None = None,
    timer: Callable[[], float] | None = None,
) -> Callable[[Callable[_P, _R]], Memo[_P, _R]]: ...
@overload
def alru_cache(maxsize: Callable[_P, Awaitable[_R]], /) -> Memo[_P, Coroutine[Any, Any, _R]]: ...
@overload
def alru_cache(
    maxsize: int | None = 128,
    typed: bool = False,
    *,
    ttl: float | None = None,
    jitter: float | None = None,
    key: Callable[..., Hashable] | None = None,
) -> Callable[[Callable[_P, Awaitable[_R]]], Memo[_P, Coroutine[Any, Any, _R]]]: ...
