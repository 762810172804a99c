"""Every decorator's wrapper (CircuitBreaker and circuit, TokenBucket and AsyncLimiter, cached
and alru_cache) looks like the function it wraps exactly as functools.wraps makes a function
look, annotations included: from 3.14 they are lazy (__annotate__), and the wrappers follow
every read and write of them as a function does (tests/pycompat.py's annotation_story)."""
import functools
import inspect
import sys

import pytest

import aiofast
from pycompat import LAZY_ANNOTATIONS, annotation_story, asyncio_iscoroutinefunction, function_wraps

WRAPPERS = {
    "CircuitBreaker": lambda fn: aiofast.CircuitBreaker()(fn),
    "circuit": lambda fn: aiofast.circuit(fn),
    "TokenBucket": lambda fn: aiofast.TokenBucket(10)(fn),
    "AsyncLimiter": lambda fn: aiofast.AsyncLimiter(10)(fn),
    "cached": lambda fn: aiofast.cached(fn),
    "alru_cache": lambda fn: aiofast.alru_cache(maxsize=4)(fn),
}


def test_the_oracle_story():
    """What functools.wraps gives, on this Python: the story the wrappers must tell too."""
    story = dict(annotation_story(function_wraps))
    if LAZY_ANNOTATIONS:
        assert story["evaluated by decorating"] == ("ok", ([], []))
        assert story["evaluated once"] == ("ok", [int, float, bytes])
        assert story["read after set"] == ("ok", {"a": str})
        assert story["__annotate__ after set"] == ("ok", None)
        assert story["read: recomputed"] == ("ok", {"z": 1})
        assert story["read: kept"] == ("ok", {"z": 1})
        assert story["set __annotate__ 5"][:2] == ("raised", "TypeError")
        assert story["del __annotate__"][:2] == ("raised", "TypeError")
        assert story["read after del"] == ("ok", ({}, None))
        assert story["read: not a dict"][:2] == ("raised", "TypeError")
        assert story["read: its error"] == ("raised", "NotImplementedError", "format 1")
        assert story["forward reference, too early"][:2] == ("raised", "NameError")
        assert story["forward reference, once defined"] == ("ok", {"item": str, "return": str})
        assert story["annotationlib FORWARDREF"] == ("ok", {"a": ("Missing", True), "b": int,
                                                            "return": None})
        assert story["annotationlib STRING"] == ("ok", {"a": "Missing", "b": "int",
                                                        "return": "None"})
        assert story["annotationlib VALUE"][:2] == ("raised", "NameError")
    else:
        assert story["evaluated by decorating"] == ("ok", ([int, float, bytes],) * 2)
        assert story["read"] == ("ok", {"x": int, "y": float, "return": bytes})
        assert story["read after set"] == ("ok", {"a": str})
        assert story["__annotate__"] == ("ok", False)


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_annotations_as_functools_wraps(name):
    assert annotation_story(WRAPPERS[name]) == annotation_story(function_wraps)


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_metadata_as_functools_wraps(name):
    async def fetch(url: str, *, timeout: float = 1.0) -> bytes:
        """Fetch url."""

    fetch.custom = 7
    w, oracle = WRAPPERS[name](fetch), function_wraps(fetch)
    for attr in functools.WRAPPER_ASSIGNMENTS + ("__wrapped__", "custom", "__annotations__"):
        assert getattr(w, attr) == getattr(oracle, attr), attr
    assert inspect.signature(w) == inspect.signature(fetch)
    assert asyncio_iscoroutinefunction(w)
    if sys.version_info >= (3, 12):  # inspect.markcoroutinefunction
        assert inspect.iscoroutinefunction(w)


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_wrapping_what_has_no_annotations(name):
    """A partial has neither __annotations__ nor __annotate__: a C wrapper of it has neither
    either, as functools.lru_cache's (async-lru's own suite checks this of alru_cache's bound
    methods)."""
    async def impl(x: int) -> int:
        return x

    w, oracle = WRAPPERS[name](functools.partial(impl)), functools.lru_cache(functools.partial(impl))
    for attr in ("__annotations__", "__annotate__"):
        assert hasattr(w, attr) == hasattr(oracle, attr), attr
        assert not hasattr(w, attr)

    class Api:
        meth = aiofast.alru_cache(functools.partial(impl))

    assert not hasattr(Api().meth, "__annotations__")
