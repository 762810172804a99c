"""cachetools' two cache classes that aiofast implements in C: ``LRUCache`` and ``TTLCache``
(full ``MutableMapping``s with cachetools' behaviour; use them with cachetools' own
``cached``/``cachedmethod`` decorators and key functions, which take any cache)."""
from .._core import LRUCache as LRUCache
from .._core import TTLCache as TTLCache

__all__ = ["LRUCache", "TTLCache"]
