"""AsyncLimiter: a drop-in for ``aiolimiter.AsyncLimiter``, built on :class:`aiofast.TokenBucket`.

aiolimiter's leaky bucket of size ``max_rate`` that drains at ``max_rate / time_period`` per
second is the token bucket ``TokenBucket(max_rate, time_period, capacity=max_rate)``: its level
is ``max_rate - tokens``. Where they differ (see the README, "AsyncLimiter"): waiters are
served strictly first come, first served (aiolimiter serves smaller amounts first and lets a
newcomer take capacity while others wait), ``has_capacity()`` is False while others wait,
``max_rate`` and ``time_period`` are read-only, and ``max_rate`` must be at least 1.
"""
import math
from collections.abc import Coroutine
from typing import Any

from ._core import TokenBucket

__all__ = ["AsyncLimiter"]

_acquire = TokenBucket.acquire
_has_capacity = TokenBucket.has_capacity


async def _nothing() -> None:
    """acquire(0): a coroutine (create_task accepts it) that finishes at once."""


def _check(value: Any, name: str, low: float, strict: bool) -> None:
    if isinstance(value, (str, bytes, complex)) or not hasattr(value, "__float__"):
        raise TypeError(f"{name} must be a real number, not {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or (v <= low if strict else v < low):
        rel = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {rel} {low}, got {value!r}")


class AsyncLimiter(TokenBucket):
    """A rate limiter with aiolimiter's API: up to ``max_rate`` acquisitions per
    ``time_period`` seconds, with bursts of up to ``max_rate``.

    ``async with limiter:`` and ``await limiter.acquire(amount=1)`` wait for capacity.
    """

    __slots__ = ()
    __module__ = "aiofast"

    def __init__(self, max_rate: float, time_period: float = 60) -> None:
        _check(max_rate, "max_rate", 1, strict=False)
        _check(time_period, "time_period", 0, strict=True)
        super().__init__(max_rate, time_period, capacity=max_rate)

    @property
    def max_rate(self) -> float:
        """The configured ``max_rate``: acquisitions per ``time_period``, and the largest burst."""
        return self.rate

    @property
    def time_period(self) -> float:
        """The configured ``time_period``, in seconds."""
        return self.per

    def acquire(self, amount: float = 1) -> Coroutine[Any, Any, None]:  # type: ignore[override]
        """Wait until ``amount`` capacity is available, then take it.

        Raises ValueError unless ``0 <= amount <= max_rate``; ``acquire(0)`` returns at once.
        """
        try:
            return _acquire(self, amount)
        except ValueError:
            if amount == 0:
                return _nothing()
            raise ValueError("Amount must be a number between 0 and the maximum capacity") from None

    def has_capacity(self, amount: float = 1) -> bool:
        """True if ``acquire(amount)`` would not wait."""
        try:
            return _has_capacity(self, amount)
        except ValueError:
            # out of TokenBucket's domain (<= 0, nan, > max_rate): aiolimiter's own answer
            return amount <= self.tokens

    def __repr__(self) -> str:
        level = float(self.max_rate) - self.tokens
        return (
            f"<AsyncLimiter(max_rate={self.max_rate!r}, time_period={self.time_period!r}) "
            f"at {id(self):#x} [level: {level:f}, waiters: {self.waiting}]>"
        )
