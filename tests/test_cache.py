"""LRUCache and TTLCache: cachetools' classes are the oracle.

Tests taking ``cimpl`` run against aiofast's classes and against cachetools' (a test cachetools
fails does not describe cachetools). Time-dependent tests use a fake clock passed as ``timer=``.
"""
import collections.abc
import copy
import functools
import gc
import math
import pickle
import random
import sys
import time
import weakref

import cachetools
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import aiofast
from helpers import ORACLES, Clock, in_threads, oracle_fixture

IMPLS = ORACLES["caches"]
cimpl = oracle_fixture("caches", "cimpl")


def check_consistent(c):
    """Invariants every cache must keep, whatever happened to it."""
    keys = list(c)
    assert len(keys) == len(set(keys)) == len(c)
    for k in keys:
        assert k in c
    assert 0 <= c.currsize <= c.maxsize
    assert list(c.keys()) == keys


# ------------------------------------------------------------------ the mapping API (oracle)


def test_registered_as_mutable_mapping():
    for cls in (aiofast.LRUCache, aiofast.TTLCache):
        assert issubclass(cls, collections.abc.MutableMapping)
        c = cls(2, 1) if cls is aiofast.TTLCache else cls(2)
        assert isinstance(c, collections.abc.MutableMapping)
        assert isinstance(c.keys(), collections.abc.KeysView)
        assert isinstance(c.values(), collections.abc.ValuesView)
        assert isinstance(c.items(), collections.abc.ItemsView)
        with pytest.raises(TypeError):
            hash(c)
        assert cls[str, int].__origin__ is cls


def test_lru_basic(cimpl):
    c = cimpl.LRUCache(maxsize=2)
    c[1] = 1
    c[2] = 2
    c[3] = 3
    assert len(c) == 2 and 1 not in c and c[2] == 2 and c[3] == 3
    c[2]
    c[4] = 4
    assert sorted(c) == [2, 4]
    c[5] = 5
    assert sorted(c) == [4, 5]
    assert c.maxsize == 2 and c.currsize == 2
    assert c.popitem() == (4, 4)
    assert c.popitem() == (5, 5)
    with pytest.raises(KeyError, match="LRUCache is empty"):
        c.popitem()


def test_lru_iteration_order_is_first_insertion(cimpl):
    c = cimpl.LRUCache(maxsize=10)
    for k in "abcde":
        c[k] = k
    c["b"] = "B"  # an update keeps the place
    c["a"]  # so does a use
    assert list(c) == list("abcde")
    assert list(c.values()) == ["a", "B", "c", "d", "e"]
    assert list(c.items())[1] == ("b", "B")
    del c["c"]
    c["c"] = 3
    assert list(c) == list("abdec")
    assert repr(c) == ("LRUCache({'a': 'a', 'b': 'B', 'd': 'd', 'e': 'e', 'c': 3}, maxsize=10, "
                       "currsize=5)")


def test_lru_popitem_order(cimpl):
    c = cimpl.LRUCache(maxsize=10)
    for k in range(6):
        c[k] = k
    c[2]
    c.get(0)
    c[4] = "x"
    c.setdefault(1, "never")
    assert [c.popitem()[0] for _ in range(6)] == [3, 5, 2, 0, 4, 1]


def test_get_pop_setdefault(cimpl):
    c = cimpl.LRUCache(maxsize=3)
    assert c.get(1) is None and c.get(1, "d") == "d"
    assert c.setdefault(1) is None and 1 in c
    assert c.setdefault(2, "two") == "two" and c.setdefault(2, "zwei") == "two"
    assert c.pop(2) == "two" and 2 not in c
    assert c.pop(2, "gone") == "gone"
    with pytest.raises(KeyError):
        c.pop(2)
    with pytest.raises(KeyError):
        del c[2]
    with pytest.raises(KeyError):
        c[2]
    c.update({3: 3}, four=4)
    c.update([(5, 5)])
    assert dict(c.items()) == {3: 3, 5: 5, "four": 4}
    c.clear()
    assert len(c) == 0 and c.currsize == 0 and list(c) == []


def test_getsizeof(cimpl):
    c = cimpl.LRUCache(maxsize=3, getsizeof=lambda x: x)
    assert c.maxsize == 3 and c.currsize == 0
    assert c.getsizeof(1) == 1 and c.getsizeof(2) == 2 and c.getsizeof(3) == 3
    c[1] = 1
    c[2] = 2
    assert c.currsize == 3 and len(c) == 2
    c[3] = 3
    assert c.currsize == 3 and len(c) == 1 and c[3] == 3
    with pytest.raises(ValueError, match="value too large"):
        c[4] = 4
    assert c.currsize == 3 and c[3] == 3
    with pytest.raises(ValueError, match="value size must be non-negative"):
        c[5] = -1
    c[0] = 0
    assert c.currsize == 3 and len(c) == 2
    c[3] = 2  # an update that shrinks
    assert c.currsize == 2


def test_getsizeof_update_evicts_the_key_itself(cimpl):
    c = cimpl.LRUCache(maxsize=4, getsizeof=lambda x: x)
    c["a"] = 1
    c["b"] = 1
    c["c"] = 1
    # "a" is the least recently used: growing it evicts it first, then "b"
    c["a"] = 3
    assert dict(c.items()) == {"c": 1, "a": 3} and c.currsize == 4
    assert list(c) == ["c", "a"]


def test_unsized_zero_maxsize(cimpl):
    c = cimpl.LRUCache(maxsize=0)
    with pytest.raises(ValueError, match="value too large"):
        c[1] = 1
    assert len(c) == 0


def test_maxsize_validation():
    with pytest.raises(ValueError, match="maxsize must be non-negative"):
        aiofast.LRUCache(-1)
    with pytest.raises(ValueError):
        aiofast.LRUCache(math.nan)
    with pytest.raises(TypeError):
        aiofast.LRUCache("3")
    with pytest.raises(TypeError):
        aiofast.LRUCache(None)
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'maxsize'"):
        aiofast.LRUCache()
    with pytest.raises(TypeError, match="unexpected keyword argument 'size'"):
        aiofast.LRUCache(size=1)
    with pytest.raises(TypeError, match="getsizeof must be callable"):
        aiofast.LRUCache(1, 3)
    with pytest.raises(ValueError, match="ttl must not be nan"):
        aiofast.TTLCache(1, math.nan)
    with pytest.raises(TypeError, match="ttl must be an int or a float"):
        aiofast.TTLCache(1, "1")
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'ttl'"):
        aiofast.TTLCache(1)
    with pytest.raises(TypeError, match="timer must be callable"):
        aiofast.TTLCache(1, 1, timer=3)
    big = aiofast.LRUCache(10**30)
    assert big.maxsize == 10**30
    inf = aiofast.LRUCache(math.inf)
    for i in range(1000):
        inf[i] = i
    assert len(inf) == 1000 and inf.maxsize == math.inf
    half = aiofast.LRUCache(2.5)
    for i in range(4):
        half[i] = i
    assert len(half) == 2


def test_getsizeof_must_return_int():
    c = aiofast.LRUCache(10, getsizeof=lambda v: 1.5)
    with pytest.raises(TypeError, match="getsizeof must return an int, got float"):
        c[1] = 1
    c = aiofast.LRUCache(10, getsizeof=lambda v: 10**30)
    with pytest.raises(ValueError, match="value too large"):
        c[1] = 1
    assert len(c) == 0


def test_missing_subclass(cimpl):
    class Squares(cimpl.LRUCache):
        def __missing__(self, key):
            self[key] = key * key
            return key * key

    c = Squares(maxsize=2)
    assert c[3] == 9 and c[4] == 16 and c[5] == 25
    assert sorted(c) == [4, 5]
    assert c.get(6) is None  # get() does not call __missing__
    assert c.pop(7, None) is None


def test_missing_super_raises_keyerror(cimpl):
    class C(cimpl.LRUCache):
        def __missing__(self, key):
            return super().__missing__(key)

    with pytest.raises(KeyError):
        C(1)["nope"]


def test_popitem_subclass_sees_evictions(cimpl):
    evicted = []

    class C(cimpl.LRUCache):
        def popitem(self):
            kv = super().popitem()
            evicted.append(kv)
            return kv

    c = C(maxsize=2)
    for k in range(5):
        c[k] = -k
    assert evicted == [(0, 0), (1, -1), (2, -2)]


def test_getsizeof_subclass(cimpl):
    class C(cimpl.LRUCache):
        @staticmethod
        def getsizeof(value):
            return len(value)

    c = C(maxsize=5)
    c["a"] = "xxx"
    c["b"] = "yy"
    assert c.currsize == 5
    c["c"] = "z"
    assert "a" not in c and c.currsize == 3


def test_equality_and_copy(cimpl):
    c = cimpl.LRUCache(maxsize=5)
    c.update(a=1, b=2)
    assert c == {"a": 1, "b": 2} and c != {"a": 1}
    assert {"a": 1, "b": 2} == c
    assert c != [("a", 1), ("b", 2)]
    d = copy.copy(c)
    assert d == c and type(d) is type(c) and d.maxsize == 5
    d["c"] = 3
    assert "c" not in c
    c["a"]
    assert d.popitem() == ("a", 1)  # the copy has its own order


def _sizeof_len(v):
    return len(v)


class PickledLRU(aiofast.LRUCache):
    pass


@pytest.mark.parametrize("proto", [2, pickle.HIGHEST_PROTOCOL])
def test_pickle_and_deepcopy(cimpl, proto):
    def build():
        c = cimpl.LRUCache(maxsize=10, getsizeof=_sizeof_len)
        for k in "abcd":
            c[k] = k * 2
        c["a"]
        return c

    # (the LRU order is checked first: cachetools' == and items() mark every item used)
    for d in (pickle.loads(pickle.dumps(build(), proto)), copy.deepcopy(build())):
        assert type(d) is cimpl.LRUCache and list(d) == list("abcd")
        assert d.currsize == 8 and d.maxsize == 10
        assert [d.popitem()[0] for _ in range(4)] == ["b", "c", "d", "a"]
    assert pickle.loads(pickle.dumps(build(), proto)) == {k: k * 2 for k in "abcd"}
    t = cimpl.TTLCache(maxsize=10, ttl=5)
    t["x"] = 1
    t2 = pickle.loads(pickle.dumps(t, proto))
    assert t2 == t and t2.ttl == 5 and t2["x"] == 1


def test_pickle_keeps_expiry_counters_and_subclass_state():
    t = aiofast.TTLCache(maxsize=10, ttl=50)
    t.set("short", 1, ttl=0.5)
    t["long"] = 2
    t.get("nope")
    d = pickle.loads(pickle.dumps(t))
    assert d.hits == t.hits and d.misses == 1
    assert d.expire(time.monotonic() + 10) == [("short", 1)]
    p = PickledLRU(3)
    p.note = "kept"
    p[1] = 1
    q = pickle.loads(pickle.dumps(p))
    assert type(q) is PickledLRU and q.note == "kept" and q[1] == 1


def test_bad_states_are_rejected():
    c = aiofast.LRUCache(3)
    for bad, exc in [((), TypeError), ("x", TypeError), (([], [0], (0, 0, 0, 0), None), ValueError),
                     (([(1, 1, 1)], [5], (0, 0, 0, 0), None), ValueError),
                     (([(1, 1, 1), (1, 2, 1)], [0, 1], (0, 0, 0, 0), None), ValueError),
                     (([(1, 1, 1)] * 4, [0, 1, 2, 3], (0, 0, 0, 0), None), ValueError),
                     (([(1, 1, 1), (2, 2, 1)], [0, 0], (0, 0, 0, 0), None), ValueError),
                     (([([], 1, 1)], [0], (0, 0, 0, 0), None), TypeError)]:
        with pytest.raises(exc):
            c.__setstate__(bad)
        check_consistent(c)


def test_views(cimpl):
    c = cimpl.LRUCache(maxsize=5)
    c.update(a=1, b=2, c=3)
    k, v, i = c.keys(), c.values(), c.items()
    assert len(k) == len(v) == len(i) == 3
    assert "a" in k and "z" not in k
    assert 2 in v and 7 not in v
    assert ("b", 2) in i and ("b", 3) not in i
    assert k & {"a", "z"} == {"a"}
    assert k | {"z"} == {"a", "b", "c", "z"}
    assert k - {"a"} == {"b", "c"}
    assert k == {"a", "b", "c"}
    assert k.isdisjoint({"x"})
    c["d"] = 4
    assert len(k) == 4  # views are live


def test_iteration_detects_resize(cimpl):
    c = cimpl.LRUCache(maxsize=5)
    c.update(a=1, b=2)
    with pytest.raises(RuntimeError):
        for key in c:
            c["new" + key] = 1


def test_iterating_and_reading(cimpl):
    c = cimpl.LRUCache(maxsize=5)
    c.update(a=1, b=2, c=3)
    assert [c[k] for k in c] == [1, 2, 3]


def test_works_with_cachetools_decorators():
    calls = []

    @cachetools.cached(aiofast.LRUCache(maxsize=2))
    def f(x):
        calls.append(x)
        return x * 2

    assert [f(1), f(1), f(2), f(3), f(1)] == [2, 2, 4, 6, 2]
    assert calls == [1, 2, 3, 1]

    cache = aiofast.TTLCache(maxsize=10, ttl=60, timer=Clock())

    @cachetools.cached(cache)
    def g(x):
        calls.append(x)
        return x

    g(1)
    g(1)
    assert calls.count(1) == 3


# ------------------------------------------------------------------ TTLCache (oracle)


def test_ttl_expiry(cimpl):
    clock = Clock()
    c = cimpl.TTLCache(maxsize=3, ttl=2, timer=clock)
    assert c.ttl == 2 and c.timer() == 100
    c[1] = 1
    clock.advance(1)
    c[2] = 2
    assert c[1] == 1 and c[2] == 2 and len(c) == 2
    clock.advance(1)
    assert 1 not in c and c[2] == 2 and len(c) == 1
    with pytest.raises(KeyError):
        c[1]
    assert c.get(1, "x") == "x"
    clock.advance(1)
    assert 2 not in c and len(c) == 0 and c.currsize == 0 and list(c) == []


def test_ttl_expire_returns_items_in_expiry_order(cimpl):
    clock = Clock()
    c = cimpl.TTLCache(maxsize=10, ttl=10, timer=clock)
    for k in "abcd":
        c[k] = k.upper()
        clock.advance(1)
    c["b"] = "B2"  # set again: expires later, keeps its place in the iteration
    assert list(c) == ["a", "b", "c", "d"]
    assert list(c.items()) == [("a", "A"), ("b", "B2"), ("c", "C"), ("d", "D")]
    assert repr(c).endswith("({'a': 'A', 'b': 'B2', 'c': 'C', 'd': 'D'}, maxsize=10, currsize=4)")
    assert list(copy.copy(c)) == ["a", "b", "c", "d"]
    assert c.expire(clock.now + 5) == []
    assert c.expire(110.5) == [("a", "A")]
    assert c.expire(200) == [("c", "C"), ("d", "D"), ("b", "B2")]
    assert len(c) == 0


def test_ttl_iteration_is_first_insertion_order(cimpl):
    clock = Clock()
    c = cimpl.TTLCache(maxsize=10, ttl=10, timer=clock)
    for k in "abcde":
        c[k] = k
        clock.advance(1)
    c["c"] = "c2"
    c["a"] = "a2"
    del c["b"]
    c["b"] = "b2"  # deleted, then set: a new key, last
    assert list(c) == ["a", "c", "d", "e", "b"]
    clock.advance(9)  # d and e expire (at 113 and 114); a, c, b were set at 105
    assert list(c) == ["a", "c", "b"]
    assert c.popitem() == ("c", "c2")  # the least recently used, whatever the iteration order
    c["c"] = "c3"  # popped: a new key again, last
    assert list(c) == ["a", "b", "c"]
    assert c.expire(clock.now + 100) == [("a", "a2"), ("b", "b2"), ("c", "c3")]


def test_ttl_iteration_over_a_snapshot(cimpl):
    """Setting or deleting items while iterating raises nothing: the keys are taken at the
    first next(), and each is yielded if still present and fresh when reached."""
    clock = Clock()
    c = cimpl.TTLCache(maxsize=10, ttl=10, timer=clock)
    c.update(a=1, b=2, c=3, d=4)
    seen = []
    for k in c:
        seen.append(k)
        c[k] = c[k] * 10  # set again: keeps its place, neither skipped nor repeated
        if k == "a":
            del c["c"]
            c["z"] = 26  # after the snapshot: not yielded
    assert seen == ["a", "b", "d"]
    assert list(c.values()) == [10, 20, 40, 26]
    assert list(c.items()) == [("a", 10), ("b", 20), ("d", 40), ("z", 26)]
    it = iter(c)
    c["y"] = 25  # before the first next(): in the snapshot
    assert list(it) == ["a", "b", "d", "z", "y"]
    it = iter(c.items())
    assert next(it) == ("a", 10)
    clock.advance(20)  # everything expires meanwhile: the rest is skipped
    assert list(it) == []
    c["q"] = 1
    it = iter(c)
    assert next(it) == "q"
    c.clear()
    assert list(it) == []


def test_ttl_expired_items_stay_until_expire(cimpl):
    clock = Clock()
    c = cimpl.TTLCache(maxsize=5, ttl=1, timer=clock)
    c["a"] = 1
    c["b"] = 2
    clock.advance(5)
    with pytest.raises(KeyError):
        c["a"]  # a miss; the item is still held
    assert c.pop("a", "dflt") == "dflt"
    with pytest.raises(KeyError):
        del c["b"]  # removed, but reported as missing
    assert sorted(c.expire()) == [("a", 1)]


def test_ttl_lru_eviction_after_expiry(cimpl):
    clock = Clock()
    c = cimpl.TTLCache(maxsize=2, ttl=10, timer=clock)
    c[1] = 1
    clock.advance(1)
    c[2] = 2
    c[1]
    c[3] = 3  # evicts 2, the least recently used
    assert sorted(c) == [1, 3]
    clock.advance(9.5)
    c[4] = 4  # 1 has expired: it goes, nothing is evicted
    assert sorted(c) == [3, 4]
    assert c.popitem() == (3, 3)


def test_ttl_popitem_skips_expired(cimpl):
    clock = Clock()
    c = cimpl.TTLCache(maxsize=5, ttl=2, timer=clock)
    c["old"] = 1
    clock.advance(1)
    c["new"] = 2
    clock.advance(1.5)
    assert c.popitem() == ("new", 2)
    with pytest.raises(KeyError, match="TTLCache is empty"):
        c.popitem()


def test_ttl_zero_and_negative(cimpl):
    clock = Clock()
    for ttl in (0, -5):
        c = cimpl.TTLCache(maxsize=5, ttl=ttl, timer=clock)
        c["a"] = 1
        assert "a" not in c and len(c) == 0 and c.get("a") is None


def test_ttl_default_clock_at_the_expiry_edge(cimpl):
    # time.monotonic() itself: an item set with ttl 0 (or less) is expired at once, one with a
    # long ttl is fresh (aiofast decides these with its coarse-then-precise clock read)
    for ttl in (0, -1e-9, -100):
        c = cimpl.TTLCache(maxsize=5, ttl=ttl)
        c["a"] = 1
        assert "a" not in c and c.get("a") is None and len(c) == 0
    c = cimpl.TTLCache(maxsize=5, ttl=3600)
    c["a"] = 1
    assert "a" in c and c["a"] == 1 and c.get("a") == 1


def test_ttl_infinite(cimpl):
    clock = Clock()
    c = cimpl.TTLCache(maxsize=5, ttl=math.inf, timer=clock)
    c["a"] = 1
    clock.advance(1e300)
    assert c["a"] == 1


def test_ttl_getsizeof(cimpl):
    clock = Clock()
    c = cimpl.TTLCache(maxsize=10, ttl=5, timer=clock, getsizeof=len)
    c["a"] = "xxxx"
    clock.advance(1)
    c["b"] = "yyyy"
    clock.advance(4.5)
    assert c.currsize == 4
    c["c"] = "zzzzzz"
    assert c.currsize == 10 and sorted(c) == ["b", "c"]
    with pytest.raises(ValueError, match="value too large"):
        c["d"] = "x" * 11


def test_ttl_default_timer_is_monotonic(cimpl):
    c = cimpl.TTLCache(maxsize=5, ttl=60)
    c["a"] = 1
    assert c["a"] == 1
    t0 = time.monotonic()
    assert t0 - 1 < c.timer() <= time.monotonic()


def test_ttl_expire_subclass_is_called(cimpl):
    seen = []

    class C(cimpl.TTLCache):
        def expire(self, time=None):
            items = super().expire(time)
            seen.extend(items)
            return items

    clock = Clock()
    c = C(maxsize=5, ttl=1, timer=clock)
    c["a"] = 1
    clock.advance(2)
    c["b"] = 2
    assert seen == [("a", 1)]


# ------------------------------------------------------------------ our extensions


def test_ttl_set_per_item():
    clock = Clock()
    c = aiofast.TTLCache(maxsize=10, ttl=10, timer=clock)
    c.set("long", 1, ttl=100)
    c.set("short", 2, ttl=1)
    c.set("default", 3)
    c.set(key="kw", value=4, ttl=5)
    assert len(c) == 4
    clock.advance(1)
    assert "short" not in c and len(c) == 3
    clock.advance(4)
    assert "kw" not in c
    clock.advance(5)
    assert list(c) == ["long"]
    assert c.expire(clock.now + 100) == [("long", 1)]
    with pytest.raises(ValueError):
        c.set("x", 1, ttl=math.nan)
    with pytest.raises(TypeError):
        c.set("x")
    with pytest.raises(TypeError):
        c.set("x", 1, ttl=1, bogus=2)


def test_ttl_set_per_item_expiry_order():
    clock = Clock()
    c = aiofast.TTLCache(maxsize=100, ttl=50, timer=clock)
    rnd = random.Random(5)
    expected = []
    for i in range(60):
        ttl = rnd.choice([None, rnd.uniform(0, 100)])
        c.set(i, i, ttl=ttl)
        expected.append((clock.now + (50 if ttl is None else ttl), i))
        last = clock.now
        clock.advance(0.5)
    expected = sorted(e for e in expected if e[0] > last)  # the others expired during the sets
    assert [k for k, _ in c.expire(1e9)] == [i for _, i in expected]


def test_ttl_nan_expiry_is_expired_at_once():
    """Found by the debug checker: an infinite time plus an infinite ttl of the other sign gave
    a nan expiry, which no expiry time compares with, so the per-item heap lost its order: a
    later item that had expired stayed below it, counted by len(). Such an item is expired at
    once (as cachetools has it: not now < nan), and sorts first."""
    clock = Clock(0.0)
    c = aiofast.TTLCache(10, 5, timer=clock)
    c.set("a", 1, ttl=3)
    clock.now = -math.inf
    c.set("nan", 2, ttl=math.inf)
    clock.now = 0.0
    c.set("b", 3, ttl=4)
    c.set("c", 4, ttl=0.5)
    clock.now = 1.0
    assert "nan" not in c and "c" not in c
    assert len(c) == 2 and sorted(c) == ["a", "b"] and c.currsize == 2
    clock.now = math.inf
    c.set("d", 5, ttl=-math.inf)  # the other sign
    assert "d" not in c and len(c) == 0
    check_consistent(c)


def test_counters_and_stats():
    c = aiofast.LRUCache(maxsize=2)
    c[1] = 1
    c[1]
    c.get(1)
    c.get(2)
    with pytest.raises(KeyError):
        c[3]
    c[2] = 2
    c[3] = 3
    assert (c.hits, c.misses, c.evictions) == (2, 2, 1)
    assert c.stats() == {"hits": 2, "misses": 2, "evictions": 1, "currsize": 2, "maxsize": 2}
    c.reset_stats()
    assert (c.hits, c.misses, c.evictions) == (0, 0, 0)
    clock = Clock()
    t = aiofast.TTLCache(maxsize=2, ttl=1, timer=clock)
    t[1] = 1
    clock.advance(2)
    assert t.get(1) is None
    t[2] = 2
    assert t.stats() == {"hits": 0, "misses": 1, "evictions": 0, "expirations": 1,
                         "currsize": 1, "maxsize": 2}


def test_sizeof_grows_with_entries():
    c = aiofast.LRUCache(maxsize=10000)
    empty = sys.getsizeof(c)
    for i in range(10000):
        c[i] = i
    assert sys.getsizeof(c) > empty + 10000 * 32


def test_uninitialised_instance_is_safe():
    c = aiofast.LRUCache.__new__(aiofast.LRUCache)
    with pytest.raises(ValueError, match="value too large"):
        c[1] = 1
    assert len(c) == 0 and c.get(1) is None and repr(c) == "LRUCache({}, maxsize=0, currsize=0)"
    t = aiofast.TTLCache.__new__(aiofast.TTLCache)
    assert len(t) == 0 and t.expire() == []


def test_reinit_clears():
    c = aiofast.LRUCache(3)
    c[1] = 1
    c.__init__(5, getsizeof=len)
    assert len(c) == 0 and c.maxsize == 5
    c["a"] = "abc"
    assert c.currsize == 3


def test_large_and_compaction():
    c = aiofast.LRUCache(maxsize=1000)
    for i in range(100_000):
        c[i] = i
        if i % 3 == 0:
            c.pop(i - 500, None)
    assert len(c) <= 1000 and all(c[k] == k for k in list(c))
    assert list(c) == sorted(c)


# ------------------------------------------------------------------ hypothesis: model vs caches


class Model:
    """The simplest executable statement of the semantics: LRU order + sizes + expiry."""

    def __init__(self, maxsize, ttl, sized):
        self.maxsize, self.ttl, self.sized = maxsize, ttl, sized
        self.data = {}  # key -> [value, size, expires, set order, first-insertion order]
        self.lru = []   # least recently used first
        self.seq = 0

    def size(self, v):
        return v % 4 if self.sized else 1

    def currsize(self):
        return sum(e[1] for e in self.data.values())

    def fresh(self, k, now):
        return k in self.data and now < self.data[k][2]

    def touch(self, k):
        self.lru.remove(k)
        self.lru.append(k)

    def remove(self, k):
        del self.data[k]
        self.lru.remove(k)

    def expire(self, now):
        out = sorted((e[2], e[3], k, e[0]) for k, e in self.data.items() if not now < e[2])
        for _, _, k, _ in out:
            self.remove(k)
        return [(k, v) for _, _, k, v in out]

    def set(self, k, v, now, ttl=None):
        if self.ttl is not None:
            self.expire(now)
        size = self.size(v)
        if size > self.maxsize:
            raise ValueError("value too large")
        need = size - (self.data[k][1] if k in self.data else 0)
        while self.currsize() + need > self.maxsize:
            victim = self.lru[0]
            self.remove(victim)
            if victim == k:
                need = size
        ttl = self.ttl if ttl is None else ttl
        expires = now + ttl if self.ttl is not None else math.inf
        self.seq += 1
        if k in self.data:  # set again: expires in its new place, iterates in its old one
            self.data[k] = [v, size, expires, self.seq, self.data[k][4]]
            self.touch(k)
        else:
            self.data[k] = [v, size, expires, self.seq, self.seq]
            self.lru.append(k)

    def order(self, now):
        return [k for k, e in sorted(self.data.items(), key=lambda kv: kv[1][4])
                if now < e[2]] if self.ttl is not None else list(self.data)


keys_st = st.integers(0, 12)
vals_st = st.integers(0, 40)


def model_from_cache(c, maxsize, ttl, sized):
    """A Model of what the cache actually holds (its pickled state: items in the table's order
    (for a TTLCache the expiry order) with their sizes, expiry times and insertion stamps, the
    LRU order), after hostile code made the model's
    prediction impossible. Values are stored as plain ints (the model never holds a hostile
    value, so the cache's reference is the last one)."""
    _, _, (items, lru, _, _) = c.__reduce__()
    m = Model(maxsize, ttl, sized)
    for item in items:
        key, value, size = item[:3]
        expires = item[3] if ttl is not None else math.inf
        m.seq += 1
        first = item[5] if ttl is not None else m.seq
        m.data[key] = [int(value), size, expires, m.seq, first]
    m.seq = max([m.seq] + [e[4] for e in m.data.values()])
    m.lru = [items[i][0] for i in lru]
    return m


class HostileClock(Clock):
    """The TTLCache's timer: it can be armed to run an action on the cache when it is next
    read (timers are Python code, read in the middle of lookups, inserts and iteration)."""

    def __init__(self, now=100.0):
        super().__init__(now)
        self.armed = None

    def __call__(self):
        action, self.armed = self.armed, None
        if action is not None:
            action()
        return self.now


def sizeof_mod4(v):
    if type(v) is Poison:
        raise OSError("getsizeof refuses this value")
    if type(v) is SizeMutator and v.action is not None:
        action, v.action = v.action, None
        action()
    return v % 4


class SizeMutator(int):
    """A value whose size getsizeof tells only after changing the cache (once)."""


class Poison(int):
    """A value whose size getsizeof refuses to tell (raises)."""


DEL_ACTIONS = ["set", "pop", "clear", "read"]
DEL_PAIRS = {(("del", n), 1000 + n) for n in range(5)}  # what __del__ actions may insert


class DelInt(int):
    """An int value whose __del__ re-enters the cache dropping it (when it is evicted,
    overwritten, popped, expired or cleared): it sets, pops, clears or reads the cache. The
    machine holds no reference to it (its model keeps plain ints), so it dies inside the cache
    operation that releases it."""

    def __del__(self):
        owner = self.owner()
        if owner is None or self.action is None or owner.model is None:
            return
        owner.fired.append((int(self), self.action))
        c, n = owner.cache, int(self)
        try:
            if self.action == "set":
                c[("del", n % 5)] = 1000 + n % 5
            elif self.action == "pop":
                c.pop(n % 13, None)
            elif self.action == "clear":
                c.clear()
            else:
                len(c)
                list(c.items())
        except ValueError as e:  # a maxsize too small for the value: expected
            if "too large" not in str(e):
                owner.del_errors.append(e)
        except BaseException as e:  # pragma: no cover - a failure, reported by the invariant
            owner.del_errors.append(e)


def tolerant(fn):
    """A rule whose model-based assertions hold unless a hostile __del__ changed the cache
    during the step (then the invariant checks conservation and takes the model from the cache
    instead). Exceptions pass through when nothing hostile ran."""

    @functools.wraps(fn)
    def step(self, *args, **kwargs):
        fired = len(self.fired)
        try:
            fn(self, *args, **kwargs)
        except (AssertionError, KeyError, pytest.fail.Exception):
            if len(self.fired) == fired:
                raise
        if len(self.fired) != fired:
            self.disturbed = True

    return step


def ready_rule(**strategies):
    """A tolerant() rule of CacheMachine that runs once the machine is set up."""

    def decorate(fn):
        return precondition(lambda self: self.ready())(rule(**strategies)(tolerant(fn)))

    return decorate


class CacheMachine(RuleBasedStateMachine):
    """The caches against Model, plus hostile keys and values: __hash__/__eq__ that raise,
    __eq__ that mutates the cache mid-lookup, values whose __del__ re-enters the cache, and a
    getsizeof that raises. Where hostile code makes the model's prediction impossible, the
    invariant checks conservation (every key findable once, sizes adding up, maxsize kept,
    nothing but known keys and values, the cache still usable) and then takes the model from
    what the cache actually holds."""

    def __init__(self):
        super().__init__()
        self.clock = HostileClock(0.0)
        self.model = None
        self.fired = []       # hostile __del__ actions run so far
        self.del_errors = []  # unexpected exceptions inside them
        self.disturbed = False
        self.extra = set(DEL_PAIRS)  # (key, value) pairs hostile code may have inserted


    def _mutation(self, action, k):
        """What hostile code does to the cache mid-operation: clear it, insert five keys, delete
        `k`, pop an item, or expire ahead of the clock."""
        c = self.cache

        def act():
            try:
                if action == "clear":
                    c.clear()
                elif action == "insert":
                    for n in range(5):
                        c[("del", n)] = 1000 + n
                elif action == "delete":
                    c.pop(k, None)
                elif action == "expire":
                    c.expire(self.clock.now + 3)
                else:
                    c.popitem()
            except (KeyError, ValueError):
                pass  # empty, or a maxsize too small: not the point

        return act

    @precondition(lambda self: self.model is None)
    @rule(maxsize=st.integers(0, 8), timed=st.booleans(), sized=st.booleans())
    def create(self, maxsize, timed, sized):
        ttl = 5 if timed else None
        gs = sizeof_mod4 if sized else None
        if timed:
            self.cache = aiofast.TTLCache(maxsize, ttl, timer=self.clock, getsizeof=gs)
        else:
            self.cache = aiofast.LRUCache(maxsize, getsizeof=gs)
        self.model = Model(maxsize, ttl, sized)
        # LRUCache: first insertion order; the model keeps dict order too (updates in place)

    def ready(self):
        return self.model is not None

    def _set(self, k, v, ttl=None, value=None):
        value = v if value is None else value
        try:
            self.model.set(k, v, self.clock.now, ttl)
        except ValueError:
            with pytest.raises(ValueError):
                if ttl is None:
                    self.cache[k] = value
                else:
                    self.cache.set(k, value, ttl=ttl)
            return False
        if ttl is None:
            self.cache[k] = value
        else:
            self.cache.set(k, value, ttl=ttl)
        return True

    @ready_rule(k=keys_st, v=vals_st)
    def setitem(self, k, v):
        self._set(k, v)

    @precondition(lambda self: self.ready() and self.model.ttl is not None)
    @rule(k=keys_st, v=vals_st, ttl=st.sampled_from([0, 0.5, 1, 3, 5, 9, 20]))
    @tolerant
    def set_ttl(self, k, v, ttl):
        self._set(k, v, ttl)

    @ready_rule(k=keys_st)
    def getitem(self, k):
        m = self.model
        now = self.clock.now
        if k in m.data:
            m.touch(k)
        if m.fresh(k, now):
            assert self.cache[k] == m.data[k][0]
        else:
            with pytest.raises(KeyError):
                self.cache[k]

    @ready_rule(k=keys_st)
    def get(self, k):
        m = self.model
        if m.fresh(k, self.clock.now):
            m.touch(k)
            assert self.cache.get(k, "d") == m.data[k][0]
        else:
            assert self.cache.get(k, "d") == "d"

    @ready_rule(k=keys_st)
    def delitem(self, k):
        m = self.model
        if k in m.data:
            fresh = m.fresh(k, self.clock.now)
            m.remove(k)
            if fresh:
                del self.cache[k]
                return
        with pytest.raises(KeyError):
            del self.cache[k]

    @ready_rule(k=keys_st)
    def pop(self, k):
        m = self.model
        if m.fresh(k, self.clock.now):
            v = m.data[k][0]
            m.remove(k)
            assert self.cache.pop(k) == v
        else:
            assert self.cache.pop(k, "d") == "d"

    @ready_rule()
    def popitem(self):
        m = self.model
        if m.ttl is not None:
            m.expire(self.clock.now)
        if m.lru:
            k = m.lru[0]
            v = m.data[k][0]
            m.remove(k)
            assert self.cache.popitem() == (k, v)
        else:
            with pytest.raises(KeyError):
                self.cache.popitem()

    @precondition(lambda self: self.ready() and self.model.ttl is not None)
    @rule(dt=st.sampled_from([0.25, 1, 2.5, 6]))
    def tick(self, dt):
        self.clock.advance(dt)

    @precondition(lambda self: self.ready() and self.model.ttl is not None)
    @rule()
    @tolerant
    def expire(self):
        assert self.cache.expire() == self.model.expire(self.clock.now)

    @ready_rule(k=keys_st, v=vals_st)
    def setdefault(self, k, v):
        m = self.model
        if m.fresh(k, self.clock.now):
            m.touch(k)
            assert self.cache.setdefault(k, v) == m.data[k][0]
        else:
            try:
                self.model.set(k, v, self.clock.now)  # as cachetools: self[key] = default
            except ValueError:
                with pytest.raises(ValueError):
                    self.cache.setdefault(k, v)
            else:
                assert self.cache.setdefault(k, v) == v

    @precondition(ready)
    @rule(k=keys_st)
    def contains(self, k):
        assert (k in self.cache) == self.model.fresh(k, self.clock.now)

    @ready_rule()
    def copy(self):
        self.cache = copy.copy(self.cache)

    @ready_rule()
    def deepcopy(self):
        """Through __reduce__/__setstate__ (what pickle uses), keeping our clock. Hostile
        values are copied too; the originals die with the old cache, re-entering the new."""
        keep = {id(self.clock): self.clock}
        keep.update((id(k), k) for k in self.model.data if isinstance(k, MutatingEq))
        self.cache = copy.deepcopy(self.cache, keep)  # (keys compared by identity: kept)

    @ready_rule(n=st.integers(1, 40))
    def churn(self, n):
        """Insert and delete fresh keys: holes, compaction and rebuilds of the table."""
        m = self.model
        for i in range(n):
            k = ("churn", i)
            try:
                m.set(k, 1, self.clock.now)
            except ValueError:
                with pytest.raises(ValueError):
                    self.cache[k] = 1
                continue
            self.cache[k] = 1
            if k in m.data:
                m.remove(k)
                del self.cache[k]

    @ready_rule()
    def clear(self):
        self.cache.clear()
        self.model.data.clear()
        self.model.lru.clear()

    # ---- hostile keys and values

    def _op(self, op, key, v):
        c = self.cache
        return {"getitem": lambda: c[key], "set": lambda: c.__setitem__(key, v),
                "get": lambda: c.get(key), "contains": lambda: key in c,
                "pop": lambda: c.pop(key), "del": lambda: c.__delitem__(key),
                "setdefault": lambda: c.setdefault(key, v)}[op]

    @precondition(ready)
    @rule(op=st.sampled_from(["getitem", "set", "get", "contains", "pop", "del",
                              "setdefault"]))
    def hostile_hash(self, op):
        """A key whose __hash__ raises: every operation raises it first and changes nothing."""
        with pytest.raises(ZeroDivisionError):
            self._op(op, BadHash(), 0)()

    @precondition(lambda self: self.ready() and any(type(k) is int for k in self.model.data))
    @rule(data=st.data(), op=st.sampled_from(["getitem", "set", "get", "contains", "pop", "del",
                                              "setdefault"]))
    def hostile_eq(self, data, op):
        """A key colliding with a resident int key, whose __eq__ raises: the lookup meets the
        resident (expired or not) and raises; the model changes only by the expiry a TTLCache
        runs before an insert's lookup."""
        k = data.draw(st.sampled_from(sorted(k for k in self.model.data if type(k) is int)))
        if op == "set" and self.model.ttl is not None:
            self.model.expire(self.clock.now)
            if k not in self.model.data:
                return  # expired: the lookup would not meet it (and the probe is inserted)
        with pytest.raises(ArithmeticError):
            self._op(op, BadEq(hash(k)), 0)()

    @precondition(lambda self: self.ready() and any(type(k) is int for k in self.model.data))
    @rule(data=st.data(), op=st.sampled_from(["set", "get", "contains", "pop", "setdefault"]),
          action=st.sampled_from(["clear", "insert", "delete", "popitem"]), v=vals_st)
    def mutating_eq(self, data, op, action, v):
        """A key colliding with a resident key whose __eq__ changes the cache (once) in the
        middle of the lookup: the lookup starts again, the operation completes as if the key
        were absent, and the cache stays whole."""
        k = data.draw(st.sampled_from(sorted(k for k in self.model.data if type(k) is int)))
        act = self._mutation(action, k)

        probe = MutatingEq(hash(k), act)
        self.extra.add((probe, v))
        self.extra.add((probe, None))
        self.disturbed = True
        try:
            r = self._op(op, probe, v)()
        except KeyError:
            assert op == "pop"  # absent after all
        except ValueError as e:
            assert "too large" in str(e) and op in ("set", "setdefault")
        else:
            if op == "get":
                assert r is None
            elif op == "contains":
                assert r is False
            elif op == "setdefault":
                assert r == v
        finally:
            probe.action = None

    @ready_rule(k=keys_st, v=vals_st, action=st.sampled_from(DEL_ACTIONS))
    def set_hostile_value(self, k, v, action):
        """A value whose __del__ re-enters the cache once the cache drops it."""
        value = DelInt(v)
        value.owner = weakref.ref(self)
        value.action = None  # armed only once the cache holds it
        try:
            if self._set(k, v, value=value):
                value.action = action
        finally:
            del value

    @ready_rule(k=keys_st, v=vals_st)
    def set_poison(self, k, v):
        """A value whose getsizeof raises: the insert fails before changing anything (but the
        expiry a TTLCache runs first); without getsizeof it is an ordinary value."""
        m = self.model
        if not m.sized:
            self._set(k, v, value=Poison(v))
            return
        if m.ttl is not None:
            m.expire(self.clock.now)
        with pytest.raises(OSError, match="getsizeof refuses"):
            self.cache[k] = Poison(v)

    @precondition(lambda self: self.ready() and self.model.sized)
    @rule(k=keys_st, v=vals_st, action=st.sampled_from(["clear", "insert", "delete",
                                                        "popitem"]))
    def set_size_mutator(self, k, v, action):
        """getsizeof changes the cache while an insert asks for the value's size (before the
        insert's lookup): the insert then completes on what is left, and the cache stays
        whole."""
        c = self.cache

        act = self._mutation(action, k)

        value = SizeMutator(v)
        value.action = act
        self.extra.add((k, v))
        self.disturbed = True
        try:
            c[k] = value
        except ValueError as e:
            assert "too large" in str(e) and v % 4 > self.model.maxsize
        assert value.action is None  # it ran

    @precondition(lambda self: self.ready() and self.model.ttl is not None)
    @rule(k=keys_st, v=vals_st,
          action=st.sampled_from(["clear", "insert", "delete", "popitem", "expire"]),
          op=st.sampled_from(["getitem", "get", "set", "set_ttl", "del", "pop", "contains",
                              "setdefault", "len", "iter", "popitem", "expire", "items"]))
    def hostile_timer(self, k, v, action, op):
        """The timer changes the cache when the next operation reads it: lookups look again,
        iteration goes on over its snapshot, and the cache stays whole."""
        c = self.cache

        act = self._mutation(action, k)

        self.extra.add((k, v))
        self.disturbed = True
        self.clock.armed = act
        ops = {"getitem": lambda: c[k], "get": lambda: c.get(k), "set": lambda: c.__setitem__(k, v),
               "set_ttl": lambda: c.set(k, v, ttl=2), "del": lambda: c.__delitem__(k),
               "pop": lambda: c.pop(k), "contains": lambda: k in c, "len": lambda: len(c),
               "iter": lambda: list(c), "popitem": c.popitem, "expire": c.expire,
               "setdefault": lambda: c.setdefault(k, v), "items": lambda: list(c.items())}
        try:
            ops[op]()
        except KeyError:
            assert op in ("getitem", "del", "pop", "popitem")
        except ValueError as e:
            assert "too large" in str(e) and op in ("set", "set_ttl", "setdefault")
        finally:
            self.clock.armed = None

    # ---- invariants

    def conserve(self):
        """After hostile code: the cache is whole and holds nothing unexplained; then the
        model becomes what the cache holds."""
        m, c = self.model, self.cache
        for _ in range(100):  # expiring may release hostile values, which may act again
            fired = len(self.fired)
            len(c)
            if len(self.fired) == fired:
                break
        fired = len(self.fired)
        keys = list(c)
        assert len(keys) == len(c) == len(set(keys))
        items = list(c.items())
        assert [k for k, _ in items] == keys
        for k, v in items:
            assert k in c and c.get(k, "missing") is v
            assert (k in m.data and m.data[k][0] == v) or (k, v) in self.extra, (k, v)
        sizes = [v % 4 if m.sized else 1 for _, v in items]
        assert c.currsize == sum(sizes) <= c.maxsize
        assert c.get(("absent",), "d") == "d"
        assert len(self.fired) == fired  # reading released nothing
        self.model = model_from_cache(c, m.maxsize, m.ttl, m.sized)
        self.disturbed = False

    @invariant()
    def agree(self):
        if self.model is None:
            return
        assert self.del_errors == []
        if self.disturbed:
            self.conserve()
            return
        m, c, now = self.model, self.cache, self.clock.now
        if m.ttl is not None:
            m.expire(now)
        fired = len(self.fired)
        n = len(c)  # a TTLCache expires here (list() asks too): hostile values may act
        if len(self.fired) != fired:
            self.conserve()
            return
        assert n == len(m.data)
        assert c.currsize == m.currsize()
        assert list(c) == m.order(now)
        assert list(c.values()) == [m.data[k][0] for k in m.order(now)]

    def teardown(self):
        self.model = None  # hostile values dying with the cache do nothing any more


CacheMachine.TestCase.settings = settings(deadline=None,
                                          suppress_health_check=list(HealthCheck))
test_state_machine = CacheMachine.TestCase


# ------------------------------------------------------------------ adversarial keys and values


class BadHash:
    def __hash__(self):
        raise ZeroDivisionError("hash")


class BadEq:
    def __init__(self, h=12345):
        self.h = h

    def __hash__(self):
        return self.h

    def __eq__(self, other):
        raise ArithmeticError("eq")


@pytest.mark.parametrize("make", [lambda: aiofast.LRUCache(10),
                                  lambda: aiofast.TTLCache(10, 100)])
def test_raising_hash_and_eq(make):
    c = make()
    c[1] = "one"
    for op in (lambda: c[BadHash()], lambda: c.__setitem__(BadHash(), 1),
               lambda: c.get(BadHash()), lambda: BadHash() in c, lambda: c.pop(BadHash()),
               lambda: c.__delitem__(BadHash()), lambda: c.setdefault(BadHash())):
        with pytest.raises(ZeroDivisionError):
            op()
    k = BadEq()
    c[k] = "k"  # no comparison needed: the slot is free
    for op in (lambda: c[BadEq()], lambda: c.__setitem__(BadEq(), 1), lambda: BadEq() in c,
               lambda: c.get(BadEq()), lambda: c.pop(BadEq()), lambda: c.__delitem__(BadEq())):
        with pytest.raises(ArithmeticError):
            op()
    assert c[k] == "k" and c[1] == "one" and len(c) == 2
    check_consistent(c)


class MutatingEq:
    """A key whose __eq__ runs an action on the cache (once per armed call)."""

    def __init__(self, h, action=None):
        self.h = h
        self.action = action

    def __hash__(self):
        return self.h

    def __eq__(self, other):
        action, self.action = self.action, None
        if action is not None:
            action()
        return self is other


@pytest.mark.parametrize("what", ["clear", "fill", "delete", "reinit", "popitem"])
@pytest.mark.parametrize("kind", ["lru", "ttl"])
def test_eq_mutating_cache_during_lookup(what, kind):
    c = aiofast.LRUCache(50) if kind == "lru" else aiofast.TTLCache(50, 100)
    resident = MutatingEq(7)
    c[resident] = "resident"
    for i in range(10):
        c[i] = i
    actions = {
        "clear": c.clear,
        "fill": lambda: [c.__setitem__(("f", i), i) for i in range(200)],  # rebuilds the table
        "delete": lambda: c.pop(resident, None),
        "reinit": lambda: c.__init__(3, 1) if kind == "ttl" else c.__init__(3),
        "popitem": lambda: [c.popitem() for _ in range(3)],
    }
    probe = MutatingEq(7, actions[what])  # same hash: the lookup compares with resident
    for op in (lambda: c.get(probe), lambda: c.__setitem__(probe, "p"), lambda: probe in c,
               lambda: c.pop(probe, None)):
        probe.action = actions[what]
        op()
        probe.action = None
        check_consistent(c)
    resident.action = actions[what]
    c[MutatingEq(7)] = "other"
    resident.action = None
    check_consistent(c)


def test_del_values_touching_the_cache():
    c = aiofast.LRUCache(maxsize=3)
    log = []

    class Evil:
        def __init__(self, n):
            self.n = n

        def __del__(self):
            log.append(self.n)
            if self.n < 50:
                c[1000 + self.n] = Evil(self.n + 100)  # re-enter: set (and evict) in __del__
            len(c)
            list(c)

    for i in range(10):
        c[i] = Evil(i)
        check_consistent(c)
    c[0] = Evil(99)
    c.pop(0, None)
    c.clear()
    check_consistent(c)
    c[7] = Evil(7)
    del c[7]
    for k in list(c):
        c.pop(k, None)
    assert len(log) >= 10
    check_consistent(c)


def test_getsizeof_and_timer_mutating_the_cache():
    c = None

    def getsizeof(v):
        if v == "boom":
            c.clear()
            c.__init__(1, 5, timer=clock, getsizeof=getsizeof)  # smaller maxsize mid-insert
        return 1

    clock = Clock()
    c = aiofast.TTLCache(10, 5, timer=clock, getsizeof=getsizeof)
    for i in range(5):
        c[i] = i
    c["x"] = "boom"
    check_consistent(c)

    def timer():
        if armed:
            armed.pop()
            t.clear()
            for i in range(100):
                t[("t", i)] = i
        return clock.now

    armed = []
    t = aiofast.TTLCache(1000, 5, timer=timer)
    t[1] = 1
    armed.append(1)
    t[2] = 2
    armed.append(1)
    assert t.get(2) is None  # found, then the timer emptied the cache: looked up again
    armed.append(1)
    # the timer, read at the first key, replaces every key by an equal one: each is found
    assert list(t) == [("t", i) for i in range(100)]
    t[1] = 1
    armed.append(1)
    assert list(t) == [("t", i) for i in range(100)]  # 1 was taken, then gone when reached
    check_consistent(t)


def test_timer_errors():
    def bad():
        raise OSError("clock")

    c = aiofast.TTLCache(5, 1, timer=bad)
    with pytest.raises(OSError):
        c[1] = 1
    with pytest.raises(OSError):
        len(c)
    c2 = aiofast.TTLCache(5, 1, timer=lambda: math.nan)
    with pytest.raises(ValueError, match="nan"):
        c2[1] = 1
    c3 = aiofast.TTLCache(5, 1, timer=lambda: "now")
    with pytest.raises(TypeError):
        c3[1] = 1


def test_popitem_subclass_raising():
    class C(aiofast.LRUCache):
        def popitem(self):
            raise RuntimeError("no")

    c = C(1)
    c[1] = 1
    with pytest.raises(RuntimeError, match="no"):
        c[2] = 2
    assert list(c) == [1]


def test_cycles_through_values_are_collected():
    class Node:
        pass

    c = aiofast.LRUCache(10)
    n = Node()
    n.cache = c
    c["self"] = n
    c["me"] = c
    r = weakref.ref(c)
    del c, n
    gc.collect()
    assert r() is None

    t = aiofast.TTLCache(10, 5)
    t["t"] = t
    rt = weakref.ref(t)
    holder = [iter(t), iter(t.items()), t.keys()]
    t["holder"] = holder  # iterators and views hold the cache too
    del t, holder
    gc.collect()
    assert rt() is None


def test_repr_recursion():
    c = aiofast.LRUCache(5)
    c["me"] = c
    assert repr(c) == "LRUCache({'me': LRUCache(...)}, maxsize=5, currsize=1)"


# ------------------------------------------------------------------ threads


class SlowKey:
    """A key whose __eq__ is Python code (the GIL can switch inside it)."""

    def __init__(self, n):
        self.n = n

    def __hash__(self):
        return self.n % 7  # many collisions: many __eq__ calls

    def __eq__(self, other):
        return isinstance(other, SlowKey) and self.n == other.n


@pytest.mark.parametrize("kind", ["lru", "ttl"])
def test_threads_hammering_one_cache(kind):
    c = aiofast.LRUCache(64) if kind == "lru" else aiofast.TTLCache(64, 1000)
    nthreads, nops = 4, 3000
    gets = [0] * nthreads
    errors = []

    def work(tid):
        rnd = random.Random(tid)
        try:
            for _ in range(nops):
                k = SlowKey(rnd.randrange(100))
                op = rnd.random()
                if op < 0.5:
                    c.get(k)
                    gets[tid] += 1
                elif op < 0.9:
                    c[k] = tid
                elif op < 0.95:
                    c.pop(k, None)
                elif rnd.random() < 0.1:
                    try:
                        list(c.items())
                    except RuntimeError as e:  # a writer raced an LRUCache's iteration
                        assert "changed size during iteration" in str(e) and kind == "lru"
                else:
                    assert 0 <= len(c) <= 64
        except BaseException as e:  # pragma: no cover - a failure path
            errors.append(e)

    in_threads(functools.partial(work, i) for i in range(nthreads))
    assert errors == []
    assert c.hits + c.misses == sum(gets)
    check_consistent(c)
    assert len(c) <= 64


# ------------------------------------------------------------------ leaks
# (tests/test_leaks.py: cache_family / memo_family in tests/leakcheck.py, on both loops)


# ------------------------------------------------------------------ cachetools' finer points (oracle)


def test_popitem_of_an_empty_cache_has_no_context(cimpl):
    for c in (cimpl.LRUCache(2), cimpl.TTLCache(2, 1)):
        with pytest.raises(KeyError) as info:
            c.popitem()
        assert info.value.__cause__ is None and info.value.__suppress_context__


def _subclasses_with_their_own_init(impl):
    """Module-level (picklable) subclasses whose __init__ takes other arguments."""

    class Lru(impl.LRUCache):
        def __init__(self, maxsize, tag="x"):
            super().__init__(maxsize)
            self.tag = tag

    class Ttl(impl.TTLCache):
        def __init__(self, maxsize, ttl=math.inf, **kwargs):
            super().__init__(maxsize, ttl=ttl, timer=Clock(), **kwargs)

    for cls in (Lru, Ttl):
        cls.__name__ = cls.__qualname__ = f"Own{cls.__name__}_{impl.name}"
        globals()[cls.__name__] = cls
    return Lru, Ttl


OWN_INIT = {name: _subclasses_with_their_own_init(impl) for name, impl in IMPLS.items()}


@pytest.mark.parametrize("proto", [2, pickle.HIGHEST_PROTOCOL])
def test_pickle_and_deepcopy_of_a_subclass_with_its_own_init(cimpl, proto):
    Lru, Ttl = OWN_INIT[cimpl.name]
    for c in (Lru(2, tag="y"), Ttl(2)):
        c.update({1: 1, 2: 2})
        for d in (pickle.loads(pickle.dumps(c, proto)), copy.deepcopy(c)):
            assert type(d) is type(c) and d == c and d is not c
            assert (d.maxsize, d.currsize) == (2, 2)
            assert getattr(d, "tag", None) == getattr(c, "tag", None)
            d[3] = 3
            assert len(d) == 2 and d[3] == 3 and len(c) == 2


def test_getsizeof_attribute_is_the_callable_given(cimpl):
    def size(value):
        return value

    c = cimpl.LRUCache(3, getsizeof=size)
    assert c.getsizeof is size
    assert copy.copy(c).getsizeof is size
    d = cimpl.LRUCache(3)
    assert d.getsizeof(12345) == 1
    assert cimpl.LRUCache.getsizeof("anything") == 1

    class Sized(cimpl.LRUCache):
        def getsizeof(self, value):
            return super().getsizeof(value) + len(value)

    s = Sized(10)
    s["a"] = "abc"
    assert s.currsize == 4


def test_timer_attribute_freezes_time(cimpl):
    clock = Clock(0)
    c = cimpl.TTLCache(maxsize=3, ttl=2, timer=clock)
    assert c.timer() == 0 and c.timer is c.timer
    c[1] = 1
    clock.advance(1)
    with c.timer as t:
        assert t == 1
        clock.advance(5)
        assert c.timer() == 1
        assert c[1] == 1  # the cache reads the frozen time too: not expired yet
        with c.timer as t2:
            assert t2 == 1
        assert c.timer() == 1
    assert c.timer() == 6
    assert 1 not in c
    assert c.timer.now == 6  # other attributes are the timer's
    d = copy.copy(c)
    assert d.timer is not c.timer
    with c.timer:
        clock.advance(1)
        assert d.timer() == 7 and c.timer() == 6


def test_timer_attribute_of_the_default_timer_freezes_monotonic(cimpl):
    c = cimpl.TTLCache(maxsize=3, ttl=1e-9)
    with c.timer as t:
        c[1] = 1
        assert c.timer() == t
        assert c[1] == 1  # would have expired on a clock that moved
    assert 1 not in c


class DatetimeClock:
    """A picklable timer reading a test's local `now`."""

    def __init__(self, read):
        self.read = read

    def __call__(self):
        return self.read()

    def __reduce__(self):
        return (_fixed_datetime, (self.read(),))


def _fixed_datetime(when):
    return lambda: when


def test_ttl_as_a_timedelta_with_datetime_timer(cimpl):
    import datetime as dt

    now = dt.datetime(2026, 1, 1, 12, 0, 0)
    clock = DatetimeClock(lambda: now)
    c = cimpl.TTLCache(maxsize=2, ttl=dt.timedelta(hours=1), timer=clock)
    assert c.ttl == dt.timedelta(hours=1)
    c[1] = 1
    now += dt.timedelta(minutes=30)
    c[2] = 2
    assert c.expire(now) == [] and list(c) == [1, 2]
    now += dt.timedelta(minutes=30)
    assert 1 not in c and c[2] == 2
    assert c.expire(now + dt.timedelta(hours=1)) == [(1, 1), (2, 2)]  # 1 was left in place
    assert len(c) == 0

    c[3] = 3
    for d in (pickle.loads(pickle.dumps(c)), copy.deepcopy(c), copy.copy(c)):
        assert d.expire(now + dt.timedelta(minutes=59)) == [] and d[3] == 3
        assert d.expire(now + dt.timedelta(hours=1)) == [(3, 3)]

    late = cimpl.TTLCache(maxsize=1, ttl=dt.timedelta(days=1), timer=lambda: dt.datetime.max)
    with pytest.raises(OverflowError):
        late["x"] = 1
    assert "x" not in late and len(late) == 0 and late.currsize == 0 and late.expire() == []
