"""The aiolimiter package's public name, on aiofast's token bucket: ``AsyncLimiter``."""
from .._compat_limiter import AsyncLimiter as AsyncLimiter

__all__ = ["AsyncLimiter"]
