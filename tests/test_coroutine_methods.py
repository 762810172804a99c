"""Every awaitable method is a coroutine function, and an awaitable dropped unstarted warns.

Libraries decide whether to await what a callable returns with inspect.iscoroutinefunction or
asyncio.iscoroutinefunction (aiostream's operators, Starlette's and FastAPI's background tasks,
engineio's and hypercorn's handlers): for asyncio's methods it says True, so it must for ours,
on the bound method, the class attribute, a subclass and a functools.partial. An operation made
and dropped without being awaited must say so, as an un-awaited coroutine does. asyncio's
classes run the same checks as the oracle wherever they have the method.
"""
import asyncio
import functools
import gc
import inspect
import os
import pickle
import sys
import tracemalloc
import warnings
import weakref

import pytest

import aiofast

# (class, method, asyncio's class with the same method or None)
AWAITABLE_METHODS = [
    (aiofast.Semaphore, "acquire", asyncio.Semaphore),
    (aiofast.Semaphore, "__aenter__", asyncio.Semaphore),
    (aiofast.Semaphore, "__aexit__", asyncio.Semaphore),
    (aiofast.BoundedSemaphore, "acquire", asyncio.BoundedSemaphore),
    (aiofast.BoundedSemaphore, "__aenter__", asyncio.BoundedSemaphore),
    (aiofast.BoundedSemaphore, "__aexit__", asyncio.BoundedSemaphore),
    (aiofast.Lock, "acquire", asyncio.Lock),
    (aiofast.Lock, "__aenter__", asyncio.Lock),
    (aiofast.Lock, "__aexit__", asyncio.Lock),
    (aiofast.Event, "wait", asyncio.Event),
    (aiofast.Queue, "put", asyncio.Queue),
    (aiofast.Queue, "get", asyncio.Queue),
    (aiofast.Queue, "join", asyncio.Queue),
    (aiofast.PriorityQueue, "put", asyncio.PriorityQueue),
    (aiofast.PriorityQueue, "get", asyncio.PriorityQueue),
    (aiofast.PriorityQueue, "join", asyncio.PriorityQueue),
    (aiofast.LifoQueue, "put", asyncio.LifoQueue),
    (aiofast.LifoQueue, "get", asyncio.LifoQueue),
    (aiofast.LifoQueue, "join", asyncio.LifoQueue),
    (aiofast.TokenBucket, "acquire", None),
    (aiofast.TokenBucket, "__aenter__", None),
    (aiofast.TokenBucket, "__aexit__", None),
    (aiofast.SharedTokenBucket, "acquire", None),
    (aiofast.SharedTokenBucket, "__aenter__", None),
    (aiofast.SharedTokenBucket, "__aexit__", None),
    (aiofast.CircuitBreaker, "call", None),
    (aiofast.CircuitBreaker, "__aenter__", None),
    (aiofast.CircuitBreaker, "__aexit__", None),
]
IDS = [f"{cls.__name__}.{name}" for cls, name, _ in AWAITABLE_METHODS]

def make(cls):
    if cls is aiofast.SharedTokenBucket:
        # its segment unlinked at once: the object keeps its mapping, nothing is left behind
        name = f"test-coro.{os.getpid()}"
        b = cls(10, shared=name)
        aiofast.shared_unlink(name)
        return b
    return cls(10) if issubclass(cls, aiofast.TokenBucket) else cls()


def subclassable(cls):
    return bool(cls.__flags__ & (1 << 10))  # Py_TPFLAGS_BASETYPE: CircuitBreaker is final


def coroutine_mark():
    """inspect.markcoroutinefunction's marker (3.12+)."""
    def f():
        pass
    return inspect.markcoroutinefunction(f)._is_coroutine_marker


def asyncio_iscoroutinefunction(f):
    # deprecated from 3.14 on (and gone later): the same answer as inspect's while it exists
    if not hasattr(asyncio, "iscoroutinefunction"):
        return inspect.iscoroutinefunction(f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return asyncio.iscoroutinefunction(f)


def verdicts(cls, name):
    """What both checks say of every way a user reaches the method."""
    obj = make(cls)
    ways = {
        "bound": getattr(obj, name),
        "class": getattr(cls, name),
        "partial": functools.partial(getattr(obj, name)),
    }
    if subclassable(cls):
        class Sub(cls):
            pass

        ways["subclass"] = getattr(Sub, name)
        ways["subclass instance"] = getattr(make(Sub), name)
    return {(way, check.__name__): check(f) for way, f in ways.items()
            for check in (inspect.iscoroutinefunction, asyncio_iscoroutinefunction)}


@pytest.mark.parametrize("cls, name, oracle", AWAITABLE_METHODS, ids=IDS)
def test_awaitable_method_is_a_coroutine_function(cls, name, oracle):
    ours = verdicts(cls, name)
    assert all(ours.values()), ours
    if oracle is not None:
        assert verdicts(oracle, name) == ours


def test_every_awaitable_method_is_listed():
    # an awaitable method added without being listed above would escape these tests
    descr_type = type(aiofast.Queue.__dict__["put"])
    found = {(cls, name) for cls in vars(aiofast).values() if isinstance(cls, type)
             for name, value in vars(cls).items() if isinstance(value, descr_type)}
    listed = {(cls, name) for cls, name, _ in AWAITABLE_METHODS
              if name in vars(cls)}
    assert found == listed


@pytest.mark.parametrize("cls, name, oracle", AWAITABLE_METHODS, ids=IDS)
def test_awaitable_method_is_function_like(cls, name, oracle):
    obj = make(cls)
    func = getattr(cls, name)
    bound = getattr(obj, name)
    assert func.__name__ == bound.__name__ == name
    owner = next(k for k in cls.__mro__ if name in vars(k))
    assert func.__qualname__ == bound.__qualname__ == f"{owner.__name__}.{name}"
    assert func.__code__.co_flags & inspect.CO_COROUTINE
    assert isinstance(func.__annotations__, dict)
    assert func.__doc__ and func.__doc__ == bound.__doc__ and "--" not in func.__doc__
    assert bound.__self__ is obj and bound.__func__ is func
    # the signature is the documented one, less self once bound
    sig = inspect.signature(func)
    assert list(sig.parameters)[0] == "self"
    assert list(inspect.signature(bound).parameters) == list(sig.parameters)[1:]
    assert bound == getattr(obj, name) and hash(bound) == hash(getattr(obj, name))
    assert bound != getattr(make(cls), name)
    assert weakref.ref(func)() is func
    assert pickle.loads(pickle.dumps(func)) is func
    if sys.version_info >= (3, 12):
        assert func._is_coroutine_marker is coroutine_mark()
    if oracle is not None and not name.startswith("__"):
        theirs = getattr(oracle, name)
        assert (func.__name__, func.__qualname__) == (theirs.__name__, theirs.__qualname__)
        assert inspect.ismethod(bound) == inspect.ismethod(getattr(make(oracle), name))


@pytest.mark.parametrize("cls", [aiofast.Queue, asyncio.Queue])
def test_bound_method_pickles_as_asyncio_does(cls):
    q = cls()
    q.put_nowait(1)
    put = pickle.loads(pickle.dumps(q.put))
    assert type(put.__self__) is cls and put.__self__.qsize() == 1
    assert put.__func__ is cls.put


WITH_TYPES = [aiofast.Lock, aiofast.Semaphore, aiofast.TokenBucket, aiofast.CircuitBreaker]


@pytest.mark.parametrize("cls", WITH_TYPES, ids=lambda c: c.__name__)
def test_special_methods_are_bound_once(cls):
    """`async with x:` looks __aenter__/__aexit__ up on every block: the bound callables are
    made once per instance and cached, so a block allocates none."""
    x = cls(1) if cls is aiofast.TokenBucket else cls()
    assert x.__aenter__ is x.__aenter__ and x.__aexit__ is x.__aexit__
    assert x.__aenter__.__self__ is x and x.__aenter__.__name__ == "__aenter__"
    assert inspect.iscoroutinefunction(x.__aenter__) and inspect.iscoroutinefunction(x.__aexit__)

    async def main():
        for _ in range(3):
            async with x:
                pass

    asyncio.run(main())


@pytest.mark.parametrize("cls", [aiofast.Lock, asyncio.Lock, aiofast.Semaphore,
                                 asyncio.Semaphore, aiofast.TokenBucket,
                                 aiofast.CircuitBreaker])
def test_special_method_bound_weakref_and_pickle(cls):
    lock = cls(1) if cls is aiofast.TokenBucket else cls()
    aenter = lock.__aenter__
    assert weakref.ref(aenter)() is aenter
    try:
        pickle.dumps(lock)
    except TypeError:  # aiofast's locks do not pickle: nor do their bound methods
        with pytest.raises(TypeError):
            pickle.dumps(aenter)
        return
    again = pickle.loads(pickle.dumps(aenter))
    assert type(again.__self__) is cls and again.__name__ == "__aenter__"
    assert inspect.iscoroutinefunction(again)


@pytest.mark.parametrize("base", [aiofast.Queue, asyncio.Queue])
def test_subclass_overrides_stay_the_subclass_functions(base):
    class AsyncPut(base):
        async def put(self, item):
            self.seen = item
            await super().put(item)

    class PlainGet(base):
        def get(self):
            return super().get()

    assert inspect.iscoroutinefunction(AsyncPut().put)
    assert not inspect.iscoroutinefunction(PlainGet().get)  # a plain def, as written
    assert inspect.iscoroutinefunction(PlainGet().put)

    async def main():
        q = AsyncPut()
        await q.put(3)
        p = PlainGet()
        p.put_nowait(4)
        return q.seen, await p.get()

    assert asyncio.run(main()) == (3, 4)


def test_unbound_calls_check_self_and_arguments():
    q = aiofast.Queue()
    with pytest.raises(TypeError, match="doesn't apply to a 'int' object"):
        aiofast.Queue.put(1, 2)
    with pytest.raises(TypeError, match="needs an argument"):
        aiofast.Queue.get()
    # asyncio's messages (its put is `def put(self, item)`): test_signatures compares them all
    with pytest.raises(TypeError, match=r"Queue.put\(\) missing 1 required positional argument: "
                                        r"'item'"):
        q.put()
    with pytest.raises(TypeError, match=r"Queue.get\(\) takes no arguments \(1 given\)"):
        q.get(1)
    with pytest.raises(TypeError, match=r"Queue.put\(\) got an unexpected keyword argument 'x'"):
        q.put(x=1)
    with pytest.raises(TypeError, match="doesn't apply to a 'Lock' object"):
        aiofast.Queue.put.__get__(aiofast.Lock())

    async def main():
        await aiofast.Queue.put(q, 1)  # the unbound call works as a bound one
        await aiofast.TokenBucket.acquire(aiofast.TokenBucket(10), tokens=2)
        return await aiofast.Queue.get(q)

    assert asyncio.run(main()) == 1


# ---------------------------------------------------------------- un-awaited operations

# (what a test drops unawaited, on asyncio's class or ours)
DROPS = {
    "Queue.put": lambda m: m.Queue().put(1),
    "Queue.get": lambda m: m.Queue().get(),
    "Queue.join": lambda m: m.Queue().join(),
    "Lock.acquire": lambda m: m.Lock().acquire(),
    "Semaphore.acquire": lambda m: m.Semaphore().acquire(),
    "Event.wait": lambda m: m.Event().wait(),
}


def warnings_of(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
        gc.collect()
    return [(w.category, str(w.message)) for w in caught]


@pytest.mark.parametrize("what", sorted(DROPS))
def test_dropped_unawaited_warns_as_asyncio(what):
    ours = warnings_of(lambda: DROPS[what](aiofast))
    assert ours == warnings_of(lambda: DROPS[what](asyncio))
    assert ours == [(RuntimeWarning, f"coroutine '{what}' was never awaited")]


def test_other_families_warn_with_their_names():
    bucket = aiofast.TokenBucket(10)

    @aiofast.cached()
    async def fetch(x):
        return x

    assert warnings_of(lambda: bucket.acquire(2)) == [
        (RuntimeWarning, "coroutine 'TokenBucket.acquire' was never awaited")]
    assert warnings_of(lambda: fetch(1)) == [
        (RuntimeWarning, f"coroutine '{fetch.__qualname__}' was never awaited")]
    breaker = aiofast.CircuitBreaker()

    async def guarded():
        return 1

    assert warnings_of(lambda: breaker.call(guarded)) == [
        (RuntimeWarning, f"coroutine '{guarded.__qualname__}' was never awaited")]
    assert warnings_of(lambda: breaker.__aenter__()) == [
        (RuntimeWarning, "coroutine 'CircuitBreaker.__aenter__' was never awaited")]
    # a decorated async def: the coroutine it made warns, once
    assert warnings_of(lambda: breaker(guarded)()) == [
        (RuntimeWarning, f"coroutine '{guarded.__qualname__}' was never awaited")]


@pytest.mark.parametrize("mod", [aiofast, asyncio], ids=["aiofast", "asyncio"])
def test_no_warning_once_awaited_closed_or_recycled(mod):
    q = mod.Queue()
    lock = mod.Lock()

    async def main():
        for i in range(5):  # the same op comes back from the reuse slot each time
            await q.put(i)
            await q.get()
            async with lock:
                pass
        pending = q.put(9)
        await pending
        q.get().close()  # closed before it started: no warning, as for a coroutine
        lock.acquire().close()

    assert warnings_of(lambda: asyncio.run(main())) == []
    assert q.qsize() == 1


def test_recycled_op_warns_once_when_dropped():
    q = aiofast.Queue()

    async def main():
        for i in range(3):
            await q.put(i)
        q.put(3)  # dropped unawaited, after three recycled uses of the same op
        for _ in range(3):
            await q.get()
        await q.put(4)  # and the slot works again afterwards

    assert warnings_of(lambda: asyncio.run(main())) == [
        (RuntimeWarning, "coroutine 'Queue.put' was never awaited")]
    assert q.qsize() == 1


def _origin_line(source):
    tb = tracemalloc.get_object_traceback(source)
    return None if tb is None else (tb[0].filename, tb[0].lineno)


@pytest.mark.parametrize("mod", [aiofast, asyncio], ids=["aiofast", "asyncio"])
def test_warning_carries_the_tracemalloc_origin(mod):
    # warnings' own formatting prints "Object allocated at" from the source's allocation
    # traceback: it must be where this op was made, even when the op object is a recycled one
    q = mod.Queue()

    async def warm():
        for i in range(3):
            await q.put(i)

    asyncio.run(warm())
    here = __file__
    tracemalloc.start()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            line = sys._getframe().f_lineno + 1
            q.put(3)
        assert len(caught) == 1 and caught[0].source is not None
        assert _origin_line(caught[0].source) == (here, line)
        text = warnings.formatwarning(caught[0].message, caught[0].category, caught[0].filename,
                                      caught[0].lineno)
        assert "coroutine 'Queue.put' was never awaited" in text
    finally:
        tracemalloc.stop()
    # and without tracing, no origin
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q.put(4)
    assert len(caught) == 1 and _origin_line(caught[0].source) is None


def test_error_filter_reports_the_warning_as_unraisable():
    # under an "error" filter the warning is raised inside the finalizer: reported as an
    # unraisable RuntimeWarning, as for an un-awaited coroutine
    seen = []
    old = sys.unraisablehook
    sys.unraisablehook = lambda u: seen.append((type(u.exc_value), str(u.exc_value)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            aiofast.Event().wait()
            asyncio.Event().wait()
    finally:
        sys.unraisablehook = old
    assert seen == [(RuntimeWarning, "coroutine 'Event.wait' was never awaited")] * 2


# ---------------------------------------------------------------- real libraries


@pytest.fixture
def installed():
    aiofast.install()
    try:
        yield
    finally:
        aiofast.uninstall()


@pytest.mark.asyncio
@pytest.mark.usefixtures("installed")
async def test_aiostream_action_keeps_every_item():
    # aiostream awaits what func returns only if iscoroutinefunction(func) says so: before,
    # every put was made and dropped, and the queue stayed empty
    from aiostream import pipe, stream

    q = asyncio.Queue()
    assert type(q) is aiofast.Queue
    xs = stream.range(5) | pipe.action(q.put)
    assert await stream.list(xs) == [0, 1, 2, 3, 4]
    assert [q.get_nowait() for _ in range(q.qsize())] == [0, 1, 2, 3, 4]


@pytest.mark.asyncio
@pytest.mark.usefixtures("installed")
async def test_starlette_background_task_runs_on_the_loop():
    # Starlette (and FastAPI's add_task) runs a callable it does not see as async in a thread
    # pool, where put() only made an awaitable that nobody awaited: the job was lost
    from starlette.background import BackgroundTask, BackgroundTasks

    q = asyncio.Queue()
    task = BackgroundTask(q.put, "job")
    assert task.is_async
    await task()
    tasks = BackgroundTasks()
    tasks.add_task(q.put, "job2")
    await tasks()
    assert [q.get_nowait(), q.get_nowait()] == ["job", "job2"]
