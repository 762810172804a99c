"""pytest plugin: run a peer's own test suite against aiofast's drop-in for it.

Loaded with ``-p aiofast_peer_shim`` (scripts/peers.sh puts this directory on PYTHONPATH) and
told which peer by AIOFAST_PEER_SHIM. Before pytest imports any test module, it puts a module in
``sys.modules`` under the peer's name whose public names are aiofast's: ``import aiolimiter``
inside the suite then gives ``aiofast.AsyncLimiter``, and so on. Names of the peer that aiofast
has no counterpart for are left out (the suite then fails where it uses them), except for the
typing-only names a suite's conftest imports for annotations.
"""
import importlib
import os
import sys
import types
import typing


def _module(name, **names):
    mod = types.ModuleType(name, f"aiofast's drop-in for {name} (scripts/peers.sh)")
    mod.__dict__.update(names)
    mod.__aiofast_shim__ = True
    return mod


def _public(peer):
    """The public names of aiofast.compat.<peer>, the module users import instead of the peer."""
    mod = importlib.import_module(f"aiofast.compat.{peer}")
    return {n: getattr(mod, n) for n in mod.__all__}


def _aiolimiter():
    return _module("aiolimiter", **_public("aiolimiter"))


def _circuitbreaker():
    return _module("circuitbreaker", **_public("circuitbreaker"))


def _async_lru():
    names = _public("async_lru")
    # typing-only names the suite imports: for annotations (_R, _LRUCacheWrapper), and
    # _CacheParameters, the TypedDict of cache_parameters() (a plain dict at run time)
    names["_R"] = typing.TypeVar("_R")
    names["_LRUCacheWrapper"] = typing.Generic
    names["_CacheParameters"] = typing.TypedDict(
        "_CacheParameters", {"typed": bool, "maxsize": typing.Optional[int], "tasks": int,
                             "closed": bool})
    return _module("async_lru", **names)


def _cachetools():
    # the real package (its Cache base, decorators and key functions), with aiofast's
    # LRUCache and TTLCache in place of its own
    real = importlib.import_module("cachetools")
    mod = _module("cachetools", **{k: v for k, v in vars(real).items()
                                   if not k.startswith("__")})
    mod.__path__ = real.__path__
    mod.__dict__.update(_public("cachetools"))
    return mod


_SHIMS = {
    "aiolimiter": _aiolimiter,
    "circuitbreaker": _circuitbreaker,
    "async_lru": _async_lru,
    "cachetools": _cachetools,
}

_peer = os.environ.get("AIOFAST_PEER_SHIM", "")
if _peer:
    if _peer not in _SHIMS:
        raise RuntimeError(f"AIOFAST_PEER_SHIM={_peer!r}: not one of {sorted(_SHIMS)}")
    sys.modules[_peer] = _SHIMS[_peer]()


def pytest_report_header(config):
    if _peer:
        return f"aiofast peer shim: import {_peer} gives aiofast's drop-in"
    return "aiofast peer shim: off (the peer itself)"
