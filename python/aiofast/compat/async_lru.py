"""The async-lru package's public names, on aiofast's memoizer: ``alru_cache`` and
``AlruCacheLoopResetWarning``."""
from .._compat_cache import AlruCacheLoopResetWarning as AlruCacheLoopResetWarning
from .._compat_cache import alru_cache as alru_cache

__all__ = ["alru_cache", "AlruCacheLoopResetWarning"]
