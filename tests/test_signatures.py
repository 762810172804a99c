"""The drop-ins' methods take their arguments as asyncio's do: the same parameters (so
`inspect.signature` agrees and `q.put(item=x)` works), and a wrong call raises the same
TypeError with the same message.

asyncio's classes are the oracle: every method they define in Python is compared, on the running
Python's asyncio (3.13 added Queue.shutdown, ...)."""
import asyncio
import inspect
import sys

import pytest

import aiofast

PAIRS = [
    (aiofast.Queue, asyncio.Queue),
    (aiofast.PriorityQueue, asyncio.PriorityQueue),
    (aiofast.LifoQueue, asyncio.LifoQueue),
    (aiofast.Lock, asyncio.Lock),
    (aiofast.Semaphore, asyncio.Semaphore),
    (aiofast.BoundedSemaphore, asyncio.BoundedSemaphore),
    (aiofast.Event, asyncio.Event),
]

# Documented differences: asyncio's PriorityQueue binds heapq's functions as defaults of its
# private _put/_get (a speed trick of the pure-Python code); ours take none.
DIFFERENT = {
    ("PriorityQueue", "_put"): ["item"],
    ("PriorityQueue", "_get"): [],
}


def python_methods(cls):
    """The names of the methods asyncio's cls defines in Python (its own or inherited)."""
    return sorted(name for name in dir(cls)
                  if inspect.isfunction(getattr(cls, name))
                  and getattr(cls, name).__module__.startswith("asyncio"))


def params(sig):
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


def make(cls):
    return cls()


CASES = [(ours, theirs, name) for ours, theirs in PAIRS for name in python_methods(theirs)
         if name != "__init__"]


@pytest.mark.parametrize("ours, theirs, name", CASES,
                         ids=[f"{o.__name__}.{n}" for o, _, n in CASES])
def test_bound_method_signature_is_asyncios(ours, theirs, name):
    mine = inspect.signature(getattr(make(ours), name))
    if (ours.__name__, name) in DIFFERENT:
        assert [p.name for p in mine.parameters.values()] == DIFFERENT[ours.__name__, name]
        return
    assert params(mine) == params(inspect.signature(getattr(make(theirs), name)))


@pytest.mark.parametrize("ours, theirs", PAIRS, ids=[o.__name__ for o, _ in PAIRS])
def test_class_signature_is_asyncios(ours, theirs):
    expected = params(inspect.signature(theirs))
    if sys.version_info < (3, 11):
        # 3.10's asyncio keeps a keyword-only loop= whose only use is to raise a TypeError
        # (ours raises the same one): not a parameter anybody can pass
        assert expected[-1][:2] == ("loop", inspect.Parameter.KEYWORD_ONLY)
        expected = expected[:-1]
        with pytest.raises(TypeError, match="loop"):
            theirs(loop=None)
        with pytest.raises(TypeError, match="loop"):
            ours(loop=None)
    assert params(inspect.signature(ours)) == expected


def outcome(call):
    """What a call does: ("ok", result) or (exception type, message without the qualname, whose
    class part names where asyncio happens to define the method, a mixin for __aexit__)."""
    try:
        r = call()
    except TypeError as e:
        msg = str(e)
        return ("TypeError", msg.split("() ", 1)[1] if "() " in msg else msg)
    return ("ok", r)


WRONG_ONE = [((), {}), ((1, 2), {}), ((), {"x": 1}), ((1,), {"item": 2}), ((), {"item": 3}),
             ((), {"item": 3, "x": 4})]


@pytest.mark.parametrize("args, kwargs", WRONG_ONE)
@pytest.mark.parametrize("name", ["put_nowait", "_put"])
@pytest.mark.parametrize("ours, theirs", PAIRS[:3], ids=[o.__name__ for o, _ in PAIRS[:3]])
def test_sync_one_argument_methods_bind_as_asyncios(ours, theirs, name, args, kwargs):
    qs = make(ours), make(theirs)
    mine, asyncios = (outcome(lambda: getattr(q, name)(*args, **kwargs)) for q in qs)
    if (ours.__name__, name) in DIFFERENT:
        return  # asyncio's takes a second (private) parameter: its messages differ
    assert mine == asyncios
    assert [list(q._queue) for q in qs][0] == list(qs[1]._queue)


@pytest.mark.parametrize("kwargs", [{"maxsize": 0}, {"size": 0}])
@pytest.mark.parametrize("ours, theirs", PAIRS[:3], ids=[o.__name__ for o, _ in PAIRS[:3]])
def test_init_and_wakeup_next_by_keyword(ours, theirs, kwargs):
    qs = make(ours), make(theirs)
    assert outcome(lambda: qs[0]._init(**kwargs)) == outcome(lambda: qs[1]._init(**kwargs))
    assert (outcome(lambda: qs[0]._wakeup_next(waiters=qs[0]._getters))
            == outcome(lambda: qs[1]._wakeup_next(waiters=qs[1]._getters)))


@pytest.mark.asyncio
@pytest.mark.parametrize("args, kwargs", WRONG_ONE)
@pytest.mark.parametrize("ours, theirs", PAIRS[:3], ids=[o.__name__ for o, _ in PAIRS[:3]])
async def test_put_binds_as_asyncios(ours, theirs, args, kwargs):
    async def attempt(q):
        try:
            await q.put(*args, **kwargs)
        except TypeError as e:
            return ("TypeError", str(e))
        return ("ok", q.get_nowait())

    assert await attempt(make(ours)) == await attempt(make(theirs))


@pytest.mark.asyncio
@pytest.mark.parametrize("args, kwargs", [
    ((None, None, None), {}),
    ((), {"exc_type": None, "exc": None, "tb": None}),
    ((None,), {"exc": None, "tb": None}),
    ((None,), {}),
    ((None, None, None, None), {}),
    ((None,), {"exc_type": None, "exc": None, "tb": None}),
    ((), {"exc_type": None, "exc": None, "tb": None, "other": 1}),
])
@pytest.mark.parametrize("ours, theirs", PAIRS[3:6], ids=[o.__name__ for o, _ in PAIRS[3:6]])
async def test_aexit_binds_as_asyncios(ours, theirs, args, kwargs):
    async def attempt(lock):
        await lock.acquire()
        try:
            await lock.__aexit__(*args, **kwargs)
        except TypeError as e:
            msg = str(e)
            return ("TypeError", msg.split("() ", 1)[1], lock.locked())
        return ("ok", lock.locked())

    assert await attempt(make(ours)) == await attempt(make(theirs))
