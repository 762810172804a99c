"""What the tests need to know about the Python they run on (3.10 to 3.15), in one place.

* ``asyncio_iscoroutinefunction(f)``: what code written for older Pythons still asks: deprecated
  from 3.14 (the warning is expected and checked, never let through), removed in 3.16.
* ``annotation_story(wrap)``: what every read and write of a wrapper's ``__annotations__`` and
  ``__annotate__`` gives; the same story for functools.wraps on a plain function is the oracle
  each of aiofast's decorators is compared with.
"""
import asyncio
import functools
import sys

import pytest

LAZY_ANNOTATIONS = sys.version_info >= (3, 14)


def asyncio_iscoroutinefunction(f):
    if sys.version_info >= (3, 14):
        with pytest.warns(DeprecationWarning, match="asyncio.iscoroutinefunction"):
            return asyncio.iscoroutinefunction(f)
    return asyncio.iscoroutinefunction(f)


def function_wraps(fn):
    """The oracle: what functools.wraps gives a plain function (the wrappers are all async)."""
    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):
        return await fn(*args, **kwargs)
    return wrapper


def _outcome(get):
    try:
        return ("ok", get())
    except Exception as e:  # the error a step raised is part of the story
        return ("raised", type(e).__name__, str(e) if not isinstance(e, AttributeError) else "")


def annotation_story(wrap):
    """Wrap fresh functions with wrap and record, step by step, what their annotations do.

    From 3.14 annotations are lazy: they are computed from __annotate__ on first access, so a
    forward reference to a name defined after decoration works and an annotation's side effect
    happens once, at first access. Before 3.14 they were computed when the function was defined
    and copied by functools.update_wrapper."""
    log = []

    def step(name, get):
        log.append((name, _outcome(get)))

    evaluated = []

    def note(value):
        evaluated.append(value)
        return value

    async def f(x: note(int), *, y: note(float) = 1.0) -> note(bytes):
        return b""

    evaluated_at_definition = list(evaluated)
    w = wrap(f)
    step("evaluated by decorating", lambda: (evaluated_at_definition, list(evaluated)))
    step("read", lambda: w.__annotations__)
    step("read again: the same dict", lambda: w.__annotations__ is w.__annotations__)
    step("evaluated once", lambda: list(evaluated))
    step("equal to the function's", lambda: w.__annotations__ == f.__annotations__)
    step("set", lambda: setattr(w, "__annotations__", {"a": str}))
    step("read after set", lambda: w.__annotations__)
    if not LAZY_ANNOTATIONS:
        step("__annotate__", lambda: hasattr(f, "__annotate__") or hasattr(w, "__annotate__"))
        return log

    step("set a list", lambda: setattr(w, "__annotations__", [1]))
    step("__annotate__ after set", lambda: w.__annotate__)
    step("__annotate__ is the function's", lambda: wrap(f).__annotate__ is f.__annotate__)
    step("set __annotate__", lambda: setattr(w, "__annotate__", lambda fmt: {"z": fmt}))
    step("read: recomputed", lambda: w.__annotations__)
    step("set __annotate__ None", lambda: setattr(w, "__annotate__", None))
    step("read: kept", lambda: w.__annotations__)
    step("set __annotate__ 5", lambda: setattr(w, "__annotate__", 5))
    step("del __annotate__", lambda: delattr(w, "__annotate__"))
    step("del", lambda: delattr(w, "__annotations__"))
    step("read after del", lambda: (w.__annotations__, w.__annotate__))
    step("set None", lambda: setattr(w, "__annotations__", None))
    step("read after None", lambda: (w.__annotations__, w.__annotate__))
    step("set __annotate__ returning a list",
         lambda: setattr(w, "__annotate__", lambda fmt: [fmt]))
    step("read: not a dict", lambda: w.__annotations__)

    def refuse(fmt):
        raise NotImplementedError(f"format {fmt}")

    step("set __annotate__ raising", lambda: setattr(w, "__annotate__", refuse))
    step("read: its error", lambda: w.__annotations__)

    # a forward reference: Later is assigned after the decoration
    async def g(item: Later) -> Later:  # noqa: F821
        return item

    wg = wrap(g)
    step("forward reference, too early", lambda: wg.__annotations__)
    Later = str
    step("forward reference, once defined", lambda: wg.__annotations__)
    del Later

    import annotationlib
    async def h(a: Missing, b: int) -> None:  # noqa: F821
        pass

    wh = wrap(h)

    def forward_refs():
        got = annotationlib.get_annotations(wh, format=annotationlib.Format.FORWARDREF)
        return {k: (v.__forward_arg__, v.__owner__ is wh) if isinstance(v, annotationlib.ForwardRef)
                else v for k, v in got.items()}

    step("annotationlib FORWARDREF", forward_refs)
    step("annotationlib STRING",
         lambda: annotationlib.get_annotations(wh, format=annotationlib.Format.STRING))
    step("annotationlib VALUE", lambda: annotationlib.get_annotations(wh))
    return log
