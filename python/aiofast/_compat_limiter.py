"""AsyncLimiter: a drop-in for ``aiolimiter.AsyncLimiter``, built on :class:`aiofast.TokenBucket`.

aiolimiter's leaky bucket of size ``max_rate`` that drains at ``max_rate / time_period`` per
second is the token bucket ``TokenBucket(max_rate, time_period, capacity=max_rate)``: its level
is ``max_rate - tokens``. Its C base, ``LeakyBucket``, follows aiolimiter's rules where they
differ from TokenBucket's: a newcomer takes capacity that is there whoever waits, waiters are
served smallest amount first, ``has_capacity()`` ignores them, a bad amount raises when the
acquire is awaited, and reuse in a new loop after the first closed warns. ``acquire`` and
``async with`` are TokenBucket's C methods: no Python frame per call. Differences that remain:
see the README, "AsyncLimiter".
"""
import math
from typing import Any

from ._core import LeakyBucket

__all__ = ["AsyncLimiter"]


def _check(value: Any, name: str, low: float, strict: bool) -> None:
    if isinstance(value, (str, bytes, complex)) or not hasattr(value, "__float__"):
        raise TypeError(f"{name} must be a real number, not {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or (v <= low if strict else v < low):
        rel = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {rel} {low}, got {value!r}")


class AsyncLimiter(LeakyBucket):
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

    def __repr__(self) -> str:
        level = float(self.max_rate) - self.tokens
        return (
            f"<AsyncLimiter(max_rate={self.max_rate!r}, time_period={self.time_period!r}) "
            f"at {id(self):#x} [level: {level:f}, waiters: {self.waiting}]>"
        )
