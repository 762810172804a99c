"""aiofast.redis: a token bucket and a circuit breaker shared by every process and host
through Redis.

The breaker (``RedisCircuitBreaker(..., store=RedisBreakerStore(client, key))``, which
``aiofast.CircuitBreaker(..., store=RedisBreakerStore(client, key))`` returns too) is described
with its scripts, further down. What follows is the token bucket's model.

``RedisTokenBucket(client, key, rate, per=1.0, *, capacity=None)`` has ``TokenBucket``'s API and
semantics where a network allows (the differences are listed on the class), on redis-py's
asyncio client (``redis.asyncio.Redis``; hiredis is used when installed). ``import aiofast``
does not import this module, nor redis: ``pip install aiofast[redis]``.

The model is GCRA (the generic cell rate algorithm): one number per bucket, the theoretical
arrival time ``tat`` (microseconds on the Redis server's clock), stored in one key. With
``interval = per / rate`` seconds per token and ``tau = capacity * interval``, the level at
``now`` is ``(tau - max(0, tat - now)) / interval`` tokens; taking ``n`` tokens moves ``tat`` to
``max(tat, now) + n * interval``, allowed at once when the result is at most ``now + tau``.
A key that does not exist is a full bucket, so the key's time to live is set to the time the
bucket takes to refill (``tat - now``): idle buckets disappear by themselves.

Waiting is a reservation: ``acquire()`` that cannot go at once moves ``tat`` anyway and is
told the instant at which its tokens will have flowed in; it sleeps locally (one timer) until
then. The order of reservations is the order of service, across every process and host, with
no wake-up messages. A waiter cancelled while it sleeps gives its tokens back only if nobody
reserved after it (the script compares the key with the value its reservation wrote);
otherwise they are spent.

Every operation is one Lua script (loaded once per server, called with EVALSHA, loaded again
after NOSCRIPT, e.g. after a restart), reading the server's TIME: no host clock is trusted, and
the only key touched is the bucket's own (safe on Redis Cluster). Nothing given by the user is
ever put into a script's text: the key is KEYS[1], the numbers are ARGV.
"""
from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import hashlib
import inspect
import logging
import math
import os
import re
import sys
import types
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import redis.exceptions as _rexc

from aiofast import CircuitBreaker, CircuitOpenError, CircuitState

__all__ = ["RedisTokenBucket", "RedisBreakerStore", "RedisCircuitBreaker", "RedisUnavailableError",
           "CircuitUnavailableError", "ON_ERROR_POLICIES"]

_T = TypeVar("_T")

ON_ERROR_POLICIES = ("raise", "allow", "deny")

# The scripts. Times are microseconds (floats, as Lua numbers are doubles: the server's TIME
# in microseconds, ~1.8e15, keeps a resolution of 0.25 us). Every number crosses the wire as a
# string written with 17 significant digits, so what a script stores is exactly what the next
# one reads. The key holds "<tat>" or "<tat> <id>": the id of the acquire() that wrote it, so
# that it can later tell whether anyone took or reserved after it. ARGV[#ARGV] is "now" for
# tests only: "" reads TIME.
_PRELUDE = """
local function clock(arg)
    if arg ~= '' then return tonumber(arg) end
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function parse(key, v)
    local tat = tonumber(string.match(v, '^[^ ]+'))
    if not tat then
        return nil, redis.error_reply('aiofast: key ' .. key .. ' does not hold a bucket')
    end
    return tat, string.match(v, ' (.*)$') or ''
end
local function read_tat(key, now)
    local v = redis.call('GET', key)
    if not v then return now end
    local tat, err = parse(key, v)
    if not tat then return err end
    if tat < now then return now end
    return tat
end
local function f(x) return string.format('%.17g', x) end
local function store(key, tat, now, id)
    local v = f(tat)
    if id ~= '' then v = v .. ' ' .. id end
    redis.call('SET', key, v, 'PX', math.max(1, math.ceil((tat - now) / 1000)))
end
"""

# ACQUIRE(key; cost, tau, max_wait, id, now) -> {admitted 0/1, wait, now}.
# Takes `cost` (tokens * interval) if the wait until they have flowed in is at most `max_wait`
# (0: only at once): tat moves by cost (the key remembers `id`) and the reply says how long to
# wait (0 when at once). Otherwise nothing changes and the reply says how long it would be.
_ACQUIRE = _PRELUDE + """
local now = clock(ARGV[5])
local tat = read_tat(KEYS[1], now)
if type(tat) == 'table' then return tat end
local new = tat + tonumber(ARGV[1])
local wait = new - tonumber(ARGV[2]) - now
if wait > tonumber(ARGV[3]) then return {0, f(wait), f(now)} end
if wait < 0 then wait = 0 end
store(KEYS[1], new, now, ARGV[4])
return {1, f(wait), f(now)}
"""

# RELEASE(key; id, cost, now) -> 1 if given back, 0 if spent.
# Gives `cost` back only if the key was last written by the acquire() named `id` (nobody took
# or reserved after it).
_RELEASE = _PRELUDE + """
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local tat, id = parse(KEYS[1], v)
if not tat then return id end
if id ~= ARGV[1] then return 0 end
local now = clock(ARGV[3])
local new = tat - tonumber(ARGV[2])
if new <= now then
    redis.call('DEL', KEYS[1])
else
    store(KEYS[1], new, now, '')
end
return 1
"""

# PEEK(key; tau, now) -> tat - now (the backlog: 0 for a full bucket, above tau while some
# reservation waits).
_PEEK = _PRELUDE + """
local now = clock(ARGV[2])
local tat = read_tat(KEYS[1], now)
if type(tat) == 'table' then return tat end
return f(tat - now)
"""

# LEASE(key; interval, need, most, tau, now) -> {tokens taken, now, wait}.
# Takes as many tokens as are available now, at most `most`, if at least `need` are (the test
# of ACQUIRE for `need`: nobody waits and they have flowed in); else takes nothing (0) and says
# how long until `need` would be there (if nobody else took them).
_LEASE = _PRELUDE + """
local now = clock(ARGV[5])
local tat = read_tat(KEYS[1], now)
if type(tat) == 'table' then return tat end
local iv, need, tau = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4])
local wait = tat + need * iv - tau - now
if wait > 0 then return {'0', f(now), f(wait)} end
local k = math.max(need, math.min(tonumber(ARGV[3]), (tau - (tat - now)) / iv))
store(KEYS[1], tat + k * iv, now, '')
return {f(k), f(now), '0'}
"""

_SCRIPTS = {name: (src, hashlib.sha1(src.encode()).hexdigest())
            for name, src in (("acquire", _ACQUIRE), ("release", _RELEASE), ("peek", _PEEK),
                              ("lease", _LEASE))}

# Key names: printable ASCII without spaces, quotes or backslashes (so they read the same in
# logs and redis-cli), at most 200 characters, after a prefix that keeps them apart from other
# software's keys. Braces are allowed: a Redis Cluster hash tag ({tenant}) picks the slot.
_KEY_RE = re.compile(r"[A-Za-z0-9_.:{}/@#$%&*+=!?<>|~^()\[\],;-]{1,200}\Z")

# Errors that say the server cannot answer now (down, restarting, loading, failing over, too
# slow): these follow the `on_error` policy. Everything else (a wrong password, an ACL that
# forbids the script, a key holding something else) is a mistake to fix, and always raises.
_TRANSIENT: tuple[type[BaseException], ...] = (
    _rexc.ConnectionError, _rexc.TimeoutError, _rexc.BusyLoadingError, _rexc.ReadOnlyError,
    _rexc.TryAgainError, _rexc.ClusterDownError, _rexc.MasterDownError, OSError,
    asyncio.TimeoutError,
)
_PERMANENT: tuple[type[BaseException], ...] = (
    _rexc.AuthenticationError, _rexc.AuthorizationError,
)



def _discard(task: asyncio.Task[Any]) -> None:
    """Done callback of a call left behind at its bound: its outcome is nobody's now (taken, so
    that asyncio does not log it as never retrieved)."""
    if not task.cancelled():
        task.exception()


async def _bounded(aw: Awaitable[_T], bound: float) -> _T:
    """``await aw``, for at most ``bound`` seconds whatever it does with a cancellation; past
    that, TimeoutError at once.

    A timeout that cancels the awaiting task (asyncio.timeout, async_timeout) ends only when the
    code it cancels lets the cancellation through, and redis-py does not always: on Python 3.10
    and 3.11 it writes through asyncio.wait_for, which returns the inner result and drops the
    cancellation when the two meet in one turn of the loop; redis-py's retry loop then goes on,
    through its backoff, for seconds. So the call runs in a task of its own: at the bound it is
    cancelled and left to end on its own, and the caller does not wait for it. A caller
    cancelled while waiting cancels it the same way."""
    task = asyncio.ensure_future(aw)
    loop = task.get_loop()
    waiter = loop.create_future()

    def wake(_: Any) -> None:
        if not waiter.done():
            waiter.set_result(None)

    timer = loop.call_later(bound, wake, None)
    task.add_done_callback(wake)
    try:
        await waiter
    finally:
        timer.cancel()
        if not task.done():
            task.remove_done_callback(wake)
            task.cancel()
            task.add_done_callback(_discard)
    if task.done():
        return task.result()
    raise asyncio.TimeoutError


# ---------------------------------------------------------------------- the multiplexed link
#
# redis-py's command path (pool checkout, retries, a parser per connection) costs about 70 us
# of CPU per round trip; one reply costs a few microseconds to parse. So every bucket of one
# client on one loop shares one connection taken from the client's pool (connected and
# authenticated by redis-py: TCP, Unix socket, TLS, ACL user, credential provider, db as the
# client says), pipelined: a call writes its command and waits on a future; one reader task
# resolves the futures in the order of the replies, which Redis sends in the order of the
# commands. The client's aclose() closes that connection too (the pool disconnects the
# connections in use); the next call then takes a new one. Clients that speak RESP3, or are not
# a plain redis.asyncio.Redis (Cluster...), go through client.evalsha.

_ERRORS = {
    b"NOSCRIPT": _rexc.NoScriptError, b"NOPERM": _rexc.NoPermissionError,
    b"WRONGPASS": _rexc.AuthenticationError, b"NOAUTH": _rexc.AuthenticationError,
    b"LOADING": _rexc.BusyLoadingError, b"READONLY": _rexc.ReadOnlyError,
    b"TRYAGAIN": _rexc.TryAgainError, b"CLUSTERDOWN": _rexc.ClusterDownError,
    b"MASTERDOWN": _rexc.MasterDownError, b"OOM": _rexc.OutOfMemoryError,
}


def _pack(*args: Any) -> bytes:
    """A command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class _Incomplete(Exception):
    pass


def _parse(buf: bytearray, i: int) -> tuple[Any, int]:
    """One RESP2 reply from buf[i:]: (value, end); raises _Incomplete. Errors are returned as
    exception objects."""
    j = buf.find(b"\r\n", i)
    if j < 0:
        raise _Incomplete
    kind = buf[i]
    if kind == 58:  # ':'
        return int(buf[i + 1:j]), j + 2
    if kind == 36:  # '$'
        n = int(buf[i + 1:j])
        if n < 0:
            return None, j + 2
        if len(buf) < j + 4 + n:
            raise _Incomplete
        return bytes(buf[j + 2:j + 2 + n]), j + 4 + n
    if kind == 42:  # '*'
        n = int(buf[i + 1:j])
        out = []
        pos = j + 2
        for _ in range(n):
            v, pos = _parse(buf, pos)
            out.append(v)
        return out, pos
    if kind == 43:  # '+'
        return bytes(buf[i + 1:j]), j + 2
    if kind == 45:  # '-'
        msg = bytes(buf[i + 1:j])
        cls = _ERRORS.get(msg.split(b" ", 1)[0], _rexc.ResponseError)
        return cls(msg.decode(errors="replace")), j + 2
    raise _rexc.InvalidResponse(f"unexpected reply from Redis: {bytes(buf[i:j])!r}")


class _Link:
    """One pipelined connection: futures in command order, resolved as the replies come.

    Each command may have a deadline (loop time; None: none), kept beside its future. One
    watchdog timer per link, at the earliest deadline it knows of, bounds them all (a timer per
    call costs a quarter of a call's CPU): when it fires, a command still unanswered past its
    deadline fails with TimeoutError, and the connection is dropped (a server that does not
    answer in time is not trusted with the next command; the other callers see a
    ConnectionError, the next call reconnects); otherwise it is set again at the earliest
    deadline still pending."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pool: Any, conn: Any) -> None:
        self.loop = loop
        self.pool = pool
        self.conn = conn
        self.writer = conn._writer
        self.waiters: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.deadlines: collections.deque[float | None] = collections.deque()
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = math.inf
        self.lost: BaseException | None = None
        self.buf = bytearray()
        # the replies go straight to this link: its protocol takes the place of the stream's
        # (which still hears of the connection's end, for redis-py's own close)
        transport = self.writer.transport
        self.stream_protocol = transport.get_protocol()
        transport.set_protocol(_LinkProtocol(self, self.stream_protocol))
        pending = getattr(conn._reader, "_buffer", None)
        if pending:
            data = bytes(pending)
            pending.clear()
            self.feed(data)

    def _watch(self) -> None:
        self.timer = None
        self.timer_at = math.inf
        now = self.loop.time()
        earliest = math.inf
        late = []
        for fut, when in zip(self.waiters, self.deadlines):
            if when is None or fut.done():
                continue
            if when <= now:
                late.append(fut)
            elif when < earliest:
                earliest = when
        if late:
            for fut in late:
                fut.set_exception(asyncio.TimeoutError())
            self.close(_rexc.TimeoutError("a call to Redis timed out"))
        elif earliest < math.inf:
            self.timer_at = earliest
            self.timer = self.loop.call_at(earliest, self._watch)

    def feed(self, data: bytes) -> None:
        """Replies came: resolve the futures they answer, in order."""
        buf = self.buf
        buf += data
        waiters = self.waiters
        deadlines = self.deadlines
        pos = 0
        try:
            while pos < len(buf) and waiters:
                try:
                    value, pos2 = _parse(buf, pos)
                except _Incomplete:
                    break
                pos = pos2
                fut = waiters.popleft()
                deadlines.popleft()
                if not fut.done():  # (a caller that timed out or was cancelled)
                    if isinstance(value, BaseException):
                        fut.set_exception(value)
                    else:
                        fut.set_result(value)
        except Exception as exc:  # noqa: BLE001 (a reply we cannot read: the link is done)
            self.close(exc)
            return
        del buf[:pos]

    async def _dispose(self) -> None:
        try:
            await self.conn.disconnect()
            await self.pool.release(self.conn)
        except BaseException:  # noqa: BLE001,S110 (nothing more to do)
            pass

    def close(self, exc: BaseException) -> None:
        if self.lost is None:
            if not isinstance(exc, _rexc.RedisError):
                exc = _rexc.ConnectionError(f"connection to Redis lost: {exc!r}")
            self.lost = exc
            try:
                self.writer.transport.abort()
            except Exception:  # noqa: BLE001,S110 (already closed)
                pass
            self.loop.create_task(self._dispose())
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
        self.deadlines.clear()
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(_rexc.ConnectionError(str(self.lost)))

    def send(self, payload: bytes, deadline: float | None = None) -> asyncio.Future[Any]:
        fut = self.loop.create_future()
        if self.lost is not None:
            fut.set_exception(_rexc.ConnectionError(str(self.lost)))
            return fut
        self.waiters.append(fut)
        self.deadlines.append(deadline)
        self.writer.write(payload)
        if deadline is not None and deadline < self.timer_at:
            if self.timer is not None:
                self.timer.cancel()
            self.timer_at = deadline
            self.timer = self.loop.call_at(deadline, self._watch)
        return fut


class _LinkProtocol(asyncio.Protocol):
    """The protocol of a link's connection: replies to the link, the end to both."""

    def __init__(self, link: _Link, stream: Any) -> None:
        self.link = link
        self.stream = stream

    def data_received(self, data: bytes) -> None:
        self.link.feed(data)

    def eof_received(self) -> bool:
        self.link.close(_rexc.ConnectionError("Redis closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.close(exc if exc is not None
                        else _rexc.ConnectionError("Redis closed the connection"))
        self.stream.connection_lost(exc)

    def pause_writing(self) -> None:
        self.stream.pause_writing()

    def resume_writing(self) -> None:
        self.stream.resume_writing()


class _Links:
    """The link of one client on the running loop, (re)connected on demand: one attempt at a
    time, shared by every caller that finds no live link."""

    def __init__(self, client: Any) -> None:
        self.pool = client.connection_pool
        self.link: _Link | None = None
        self.connecting: _Attempt | None = None

    @staticmethod
    def usable(client: Any) -> bool:
        import redis.asyncio as ra
        pool = getattr(client, "connection_pool", None)
        if type(client) is not ra.Redis or pool is None:
            return False
        return str(pool.connection_kwargs.get("protocol") or 2) == "2"

    async def get(self) -> _Link:
        """The live link, or the one being made. Callers that find none wait for one attempt,
        shielded (a caller that gives up, at its bound or cancelled, does not stop it for the
        others), so a burst of calls at start or after an outage opens one connection, not one
        each. When the last caller waiting for an attempt gives up, the attempt is cancelled
        and forgotten: a later call starts afresh (the server may be back by then) rather than
        wait for one begun while it was down. An attempt that fails fails every caller waiting
        for it."""
        loop = asyncio.get_running_loop()
        link = self.link
        if link is not None and link.lost is None and link.loop is loop:
            return link
        attempt = self.connecting
        if attempt is None or attempt.task.done() or attempt.task.get_loop() is not loop:
            attempt = self.connecting = _Attempt(loop.create_task(self._connect(loop)))
        attempt.waiting += 1
        try:
            return await asyncio.shield(attempt.task)
        finally:
            attempt.waiting -= 1
            if attempt.waiting == 0 and not attempt.task.done():
                attempt.task.cancel()
                if self.connecting is attempt:
                    self.connecting = None

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Link:
        me = asyncio.current_task()
        try:
            try:
                conn = await self.pool.get_connection()
            except TypeError:  # redis-py before 5.3 wants a command name
                conn = await self.pool.get_connection("EVALSHA")
            try:
                if getattr(conn, "_writer", None) is None or getattr(conn, "_reader", None) is None:
                    await conn.connect()
                link = self.link
                if link is not None and link.lost is None and link.loop is loop:
                    # an attempt given up on (its cancellation dropped) ended after a newer one
                    await self.pool.release(conn)
                    return link
            except BaseException:
                await self.pool.release(conn)
                raise
            self.link = link = _Link(loop, self.pool, conn)
            return link
        finally:
            if self.connecting is not None and self.connecting.task is me:
                self.connecting = None


class _Attempt:
    """One attempt to connect a link, and how many callers wait for it."""

    __slots__ = ("task", "waiting")

    def __init__(self, task: asyncio.Task[_Link]) -> None:
        self.task = task
        self.waiting = 0
        task.add_done_callback(_discard)  # its outcome taken even when every caller gave up


_links: weakref.WeakKeyDictionary[Any, _Links | None] = weakref.WeakKeyDictionary()


def _links_of(client: Any) -> _Links | None:
    try:
        return _links[client]
    except KeyError:
        pass
    except TypeError:
        return None
    links = _Links(client) if _Links.usable(client) else None
    _links[client] = links
    return links


class RedisUnavailableError(ConnectionError):
    """Redis could not answer (down, restarting, too slow...) and the policy is "raise".

    ``__cause__`` is the error redis-py raised, or the ``TimeoutError`` of ``call_timeout``.
    """


def _real(value: Any, name: str) -> float:
    if isinstance(value, (str, bytes, complex)) or not hasattr(value, "__float__"):
        raise TypeError(f"{name} must be a real number, not {type(value).__name__}")
    return float(value)


def _fmt(x: float) -> str:
    return repr(float(x))


class _Scripted:
    """What a Redis-backed object shares: its keys, its scripts and how one runs.

    ``_heads[name]`` is the script's command in RESP up to its arguments (EVALSHA, the sha, the
    keys); ``_scripts[name]`` its (source, sha)."""

    __slots__ = ("_client", "_key", "_keys", "_links", "_heads", "_scripts", "_on_error",
                 "_call_timeout", "__weakref__")
    _client: Any
    _key: str
    _keys: tuple[str, ...]
    _links: _Links | None
    _heads: dict[str, bytes]
    _scripts: dict[str, tuple[str, str]]
    _on_error: str
    _call_timeout: float | None

    @staticmethod
    def _check(key: Any, prefix: Any, on_error: Any, call_timeout: Any) -> None:
        """The arguments every Redis-backed object takes, checked."""
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise ValueError("key must be 1 to 200 printable ASCII characters without spaces, "
                             f"quotes or backslashes, got {key!r}")
        if not isinstance(prefix, str) or (prefix and not _KEY_RE.match(prefix)):
            raise ValueError(f"prefix must be printable ASCII like key, got {prefix!r}")
        if on_error not in ON_ERROR_POLICIES:
            raise ValueError(f"on_error must be one of {ON_ERROR_POLICIES}, got {on_error!r}")
        if call_timeout is not None:
            ct = _real(call_timeout, "call_timeout")
            if not (ct > 0):
                raise ValueError(f"call_timeout must be > 0 or None, got {call_timeout!r}")

    @property
    def key(self) -> str:
        """The Redis key (the prefix and the name given; for a breaker's store, the key of the
        state: its probe leases are this key + ":probes")."""
        return self._key

    @property
    def on_error(self) -> str:
        return self._on_error

    def _setup(self, client: Any, keys: tuple[str, ...], scripts: dict[str, tuple[str, str]],
               nargs: dict[str, int], multiplex: bool) -> None:
        self._client = client
        self._keys = keys
        self._scripts = scripts
        self._links = _links_of(client) if multiplex else None
        kpart = b"$%d\r\n%d\r\n" % (len(str(len(keys))), len(keys)) + b"".join(
            b"$%d\r\n%s\r\n" % (len(k.encode()), k.encode()) for k in keys)
        self._heads = {name: b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n"
                       % (3 + len(keys) + n, scripts[name][1].encode()) + kpart
                       for name, n in nargs.items()}

    # ------------------------------------------------------------------ the one round trip

    async def _script(self, name: str, *args: str, limit: float | None = None) -> Any:
        """Run one script on the object's keys: EVALSHA, loading it once on NOSCRIPT; bounded
        by call_timeout (or `limit`, if sooner). Raises what redis-py raises (or TimeoutError)."""
        bound = self._call_timeout
        if limit is not None and bound is not None and limit < bound:
            bound = max(limit, 0.0)
        links = self._links
        if links is not None:
            link = links.link
            loop = asyncio.get_running_loop()
            if link is not None and link.lost is None and link.loop is loop:
                # connected: the link's watchdog bounds the wait (no timer of our own)
                return await self._send(link, name, args,
                                        None if bound is None else loop.time() + bound)
        if bound is None:
            return await self._run(name, args)
        try:
            return await _bounded(self._run(name, args), bound)
        except asyncio.TimeoutError:
            # a server that does not answer in time is not trusted with the next call: drop
            # the shared connection (its callers see a ConnectionError; the next call
            # reconnects). A caller's own cancellation leaves it alone (its reply is skipped).
            link = self._links.link if self._links is not None else None
            if link is not None:
                link.close(_rexc.TimeoutError("a call to Redis timed out"))
            raise

    async def _run(self, name: str, args: tuple[str, ...]) -> Any:
        links = self._links
        if links is None:
            src, sha = self._scripts[name]
            client = self._client
            try:
                return await client.evalsha(sha, len(self._keys), *self._keys, *args)
            except _rexc.NoScriptError:
                await client.script_load(src)
                return await client.evalsha(sha, len(self._keys), *self._keys, *args)
        link = links.link
        if link is None or link.lost is not None or link.loop is not asyncio.get_running_loop():
            link = await links.get()
        return await self._send(link, name, args, None)

    async def _send(self, link: _Link, name: str, args: tuple[str, ...],
                    deadline: float | None) -> Any:
        payload = self._heads[name] + b"".join(
            [b"$%d\r\n%s\r\n" % (len(a), a.encode() if a.__class__ is str else a)
             for a in args])
        try:
            return await link.send(payload, deadline)
        except _rexc.NoScriptError:
            await link.send(_pack("SCRIPT", "LOAD", self._scripts[name][0]), deadline)
            return await link.send(payload, deadline)

    def _failed(self, exc: BaseException) -> str:
        """The policy for an error of a round trip: re-raises what must be raised, else
        returns "allow" or "deny"."""
        if isinstance(exc, _PERMANENT) or not isinstance(exc, _TRANSIENT):
            raise exc
        if self._on_error == "raise":
            raise RedisUnavailableError(
                f"Redis did not answer for {self._key!r}: {type(exc).__name__}: {exc}") from exc
        return self._on_error


class RedisTokenBucket(_Scripted):
    """A token bucket kept in Redis, shared by every process and host that opens the same key.

    ``rate`` tokens flow in every ``per`` seconds, continuously, up to ``capacity`` (the largest
    burst; default ``rate``, and at least 1). A bucket whose key does not exist is full.

    Differences from ``aiofast.TokenBucket``, which a network imposes:

    - ``tokens()`` and ``has_capacity()`` are coroutines (they ask the server), ``reset()``
      too (it deletes the key: full again); there is no ``initial`` (a key that expired must
      mean full) and no ``waiting`` (the waiters live in many processes).
    - ``acquire(n, timeout=t)`` knows at once whether its reservation would be served within
      ``t``: if not, it reserves nothing, and raises ``TimeoutError`` when ``t`` has passed (as
      ``TokenBucket`` does; a waiter ahead that gives tokens back in between does not make it
      go sooner).
    - a waiter cancelled while it sleeps gives its tokens back only if nobody reserved after it.

    Faults (``on_error``): when Redis cannot answer within ``call_timeout`` seconds (down,
    restarting, failing over, overloaded), ``"raise"`` (default) raises
    ``RedisUnavailableError``; ``"allow"`` admits (``try_acquire`` True, ``acquire`` returns,
    ``tokens()`` says ``capacity``); ``"deny"`` refuses (``try_acquire`` False, ``tokens()`` 0,
    and ``acquire`` tries again every ``retry_interval`` seconds until it is admitted or its
    timeout passes). Configuration errors (authentication, ACL, a key holding something else)
    always raise. A call that timed out may still be run by the server later (its command was
    sent): its tokens may be spent although the caller was told of an error.

    ``multiplex=True`` (default): the buckets of one client share one connection of its pool,
    pipelined (see above); ``False``: every call goes through ``client.evalsha``.

    Leasing for hot keys (``lease=N``, from 1 to ``capacity`` tokens): ``try_acquire()`` takes,
    in one round trip, as many tokens as have flowed in (at most N held by the process, at
    least what the call needs) and spends them locally, with no round trip, until they run out;
    a refused lease tells when the tokens missing will have flowed in, and until then the
    process refuses without asking. ``acquire()`` spends leased tokens first, and otherwise
    reserves exactly its own. The cost: tokens a process holds were taken from Redis earlier,
    so in any window of w seconds the fleet admits at most ``rate * w / per + capacity +
    processes * N`` tokens (instead of ``rate * w / per + capacity``), never more than the
    bucket gave out in all; and tokens held by a process that stops asking are lost to the
    others (at most ``processes * N`` at any instant). Under demand below the rate, one round
    trip serves N calls; when the fleet asks for more than the rate, a lease finds about what
    flowed in since the last one (a token or so) and saves little.
    """

    __slots__ = ("_name", "_rate", "_per", "_capacity", "_interval_us", "_tau_us", "_cap",
                 "_tau_arg", "_one_arg", "_retry_interval", "_lease", "_stash", "_refill",
                 "_dry_until", "_now")

    def __init__(self, client: Any, key: str, rate: float, per: float = 1.0, *,
                 capacity: float | None = None, prefix: str = "aiofast:tb:",
                 on_error: str = "raise", call_timeout: float | None = 1.0,
                 retry_interval: float = 0.1, multiplex: bool = True,
                 lease: float | None = None) -> None:
        self._check(key, prefix, on_error, call_timeout)
        r = _real(rate, "rate")
        if not (r > 0 and math.isfinite(r)):
            raise ValueError(f"rate must be a finite number > 0, got {rate!r}")
        p = _real(per, "per")
        if not (p > 0 and math.isfinite(p)):
            raise ValueError(f"per must be a finite number of seconds > 0, got {per!r}")
        if capacity is None:
            cap = r if r >= 1 else 1.0
        else:
            cap = _real(capacity, "capacity")
            if not (cap >= 1 and math.isfinite(cap)):
                raise ValueError(f"capacity must be a finite number >= 1, got {capacity!r}")
        ri = _real(retry_interval, "retry_interval")
        if not (ri > 0 and math.isfinite(ri)):
            raise ValueError(f"retry_interval must be a finite number > 0, got {retry_interval!r}")
        self._name = key
        self._key = prefix + key
        if lease is not None:
            ls = _real(lease, "lease")
            if not (1 <= ls <= cap):
                raise ValueError(f"lease must be a number of tokens from 1 to capacity "
                                 f"({cap:g}), got {lease!r}")
        self._lease = None if lease is None else float(lease)
        self._stash = 0.0
        self._refill: asyncio.Future[Any] | None = None
        self._dry_until = -math.inf
        self._setup(client, (self._key,), _SCRIPTS,
                    {"acquire": 5, "release": 3, "peek": 2, "lease": 5}, multiplex)
        self._rate = rate
        self._per = per
        self._capacity = capacity if capacity is not None else (rate if r >= 1 else 1)
        interval = p / r
        self._interval_us = interval * 1e6
        self._tau_us = cap * interval * 1e6
        self._cap = cap
        # the scripts' arguments, as strings, computed once
        self._tau_arg = _fmt(self._tau_us)
        self._one_arg = _fmt(self._interval_us)
        self._on_error = on_error
        self._call_timeout = call_timeout
        self._retry_interval = ri
        self._now = ""  # tests only: the server's clock, in microseconds, as a string

    # ------------------------------------------------------------------ properties

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def per(self) -> float:
        return self._per

    @property
    def capacity(self) -> float:
        return self._capacity

    def __repr__(self) -> str:
        return (f"<aiofast.redis.RedisTokenBucket object at {id(self):#x} "
                f"[key:{self._key}, rate:{self._rate}/{self._per}s, capacity:{self._capacity}, "
                f"on_error:{self._on_error}]>")

    def _cost(self, tokens: Any) -> str:
        """The cost of `tokens`, checked, as the scripts' argument (microseconds)."""
        if tokens.__class__ is int and tokens == 1:
            return self._one_arg
        n = _real(tokens, "tokens")
        if not (n > 0) or math.isnan(n):
            raise ValueError(f"tokens must be > 0, got {tokens!r}")
        if n > self._cap:
            raise ValueError(f"tokens must be <= capacity ({self._capacity!r}), got {tokens!r}: "
                             "the request could never be satisfied")
        return _fmt(n * self._interval_us)

    # ------------------------------------------------------------------ the API

    @property
    def lease(self) -> float | None:
        """The most tokens one round trip takes for this process to spend locally (None: no
        leasing)."""
        return self._lease

    @property
    def leased(self) -> float:
        """The tokens this process holds from its leases (taken from Redis, not yet spent)."""
        return self._stash

    async def try_acquire(self, tokens: float = 1) -> bool:
        """Take ``tokens`` if they are available now and nobody waits (no reservation is
        pending); never waits. One round trip (with ``lease``: only when the tokens this
        process leased run out)."""
        cost = self._cost(tokens)
        if self._lease is not None:
            n = 1.0 if cost is self._one_arg else float(cost) / self._interval_us
            if n <= self._lease:
                return await self._leased(n)
        try:
            r = await self._script("acquire", cost, self._tau_arg, "0", "", self._now)
        except Exception as exc:  # noqa: BLE001 (sorted by _failed)
            return self._failed(exc) == "allow"
        return r[0] == 1

    async def _leased(self, n: float) -> bool:
        """try_acquire(n) with leasing: from the tokens this process holds, taking a new
        lease when they do not suffice (as many tokens as are available, at most `lease` held
        in all, at least what is missing). One lease at a time per bucket: concurrent callers
        wait for the one in flight, then look again. A lease refused says when the tokens
        missing will have flowed in: until then, refused without asking."""
        loop = asyncio.get_running_loop()
        while True:
            if self._stash >= n:
                self._stash -= n
                return True
            if loop.time() < self._dry_until:
                return False
            fut = self._refill
            if fut is not None:
                got = await asyncio.shield(fut)
                if got is False:
                    return False
                if isinstance(got, BaseException):
                    return self._failed(got) == "allow"
                continue
            fut = self._refill = loop.create_future()
            result: Any = None   # what the waiters see: True (look again), False, an error
            sent = loop.time()
            try:
                most = (self._lease or 0.0) - self._stash
                r = await self._script("lease", self._one_arg, _fmt(n - self._stash),
                                       _fmt(most), self._tau_arg, self._now)
                got_n = float(r[0])
                if got_n > 0:
                    self._stash += got_n
                    result = True
                else:
                    self._dry_until = sent + float(r[2]) / 1e6
                    result = False
            except Exception as exc:  # noqa: BLE001 (sorted by _failed)
                result = exc
            finally:
                # (cancelled: None, the waiters look again)
                self._refill = None
                fut.set_result(result)
            if result is False:
                return False
            if isinstance(result, BaseException):
                return self._failed(result) == "allow"

    async def acquire(self, tokens: float = 1, timeout: float | None = None) -> None:
        """Wait until ``tokens`` are available, take them. With ``timeout`` (seconds), raise
        ``TimeoutError`` when it passes, having taken nothing; ``timeout <= 0``: only if
        available at once; ``None``/``inf``: no limit.

        One round trip reserves the tokens and returns the instant they will have flowed in;
        the task then sleeps until that instant (one timer). With ``lease``, tokens this
        process holds are spent first (no round trip); a reservation is never leased."""
        cost = self._cost(tokens)
        if self._stash:
            n = 1.0 if cost is self._one_arg else float(cost) / self._interval_us
            if self._stash >= n:
                self._stash -= n
                return
        if timeout is not None:
            t = _real(timeout, "timeout")
            if math.isnan(t):
                raise ValueError("timeout must be a number or None, got nan")
            if t <= 0:
                if not await self.try_acquire(tokens):
                    raise TimeoutError(f"acquire() timed out after {timeout!r} s: the tokens "
                                       "were not available at once")
                return
        else:
            t = math.inf
        loop = asyncio.get_running_loop()
        deadline = loop.time() + t
        cost_s, tau_s = cost, self._tau_arg
        rid = os.urandom(8).hex()  # this reservation's name in the key, to give it back
        while True:
            left = deadline - loop.time()
            max_wait = "1e300" if math.isinf(left) else _fmt(max(left, 0.0) * 1e6)
            try:
                r = await self._script("acquire", cost_s, tau_s, max_wait, rid, self._now,
                                       limit=None if math.isinf(left) else left)
            except asyncio.CancelledError:
                # the script may have run: give back what it may have reserved
                await self._give_back(rid, cost_s)
                raise
            except Exception as exc:  # noqa: BLE001 (sorted by _failed)
                # the bound that fired was this acquire's own when it was the nearer one (not
                # told by the clock alone: uvloop's whole milliseconds can read a hair short)
                if isinstance(exc, asyncio.TimeoutError) and (
                        loop.time() >= deadline or self._call_timeout is None
                        or left < self._call_timeout):
                    raise TimeoutError(f"acquire({tokens!r}) timed out after {timeout!r} s: "
                                       "Redis did not answer in time") from exc
                if self._failed(exc) == "allow":
                    return
                # deny: ask again later, until the deadline
                pause = min(self._retry_interval, deadline - loop.time())
                if pause <= 0:
                    raise TimeoutError(f"acquire({tokens!r}) timed out after {timeout!r} s: "
                                       "Redis did not answer") from exc
                await asyncio.sleep(pause)
                continue
            if r[0] == 1:
                break
            # not served within the deadline: nothing reserved; time out when it passes
            left = deadline - loop.time()
            if left > 0:
                await asyncio.sleep(left)
            raise TimeoutError(f"acquire({tokens!r}) timed out after {timeout!r} s")
        wait = self._delay(r)
        if wait <= 0:
            return
        try:
            await asyncio.sleep(wait)
        except asyncio.CancelledError:
            await self._give_back(rid, cost_s)
            raise

    @staticmethod
    def _delay(reply: Any) -> float:
        """How long to sleep for a reservation, from its reply: the wait the script computed,
        counted from now (after the reply came: never sooner than the instant reserved)."""
        return float(reply[1]) / 1e6

    async def _give_back(self, rid: str, cost_s: str) -> None:
        """A cancelled acquire(): its tokens go back if nobody took or reserved after it (else
        they are spent, as they are if Redis does not answer)."""
        try:
            await self._script("release", rid, cost_s, self._now)
        except Exception:  # noqa: BLE001,S110 (the reservation stays spent)
            pass

    async def has_capacity(self, tokens: float = 1) -> bool:
        """Would ``acquire(tokens)`` finish at once? (available now and nobody waits)"""
        cost = self._cost(tokens)
        backlog = await self._backlog()
        if backlog is None:
            return self._on_error == "allow"
        return backlog + float(cost) <= self._tau_us

    async def tokens(self) -> float:
        """The level now: from 0 (or while reservations wait) to ``capacity``."""
        backlog = await self._backlog()
        if backlog is None:
            return float(self._capacity) if self._on_error == "allow" else 0.0
        level = (self._tau_us - backlog) / self._interval_us
        return min(float(self._capacity), max(0.0, level))

    async def _backlog(self) -> float | None:
        try:
            return float(await self._script("peek", self._tau_arg, self._now))
        except Exception as exc:  # noqa: BLE001 (sorted by _failed)
            self._failed(exc)
            return None

    async def reset(self) -> None:
        """Start over: full (deletes the key). Reservations already made keep their instants;
        the tokens this process leased are dropped."""
        self._stash = 0.0
        self._dry_until = -math.inf
        try:
            if self._call_timeout is None:
                await self._client.delete(self._key)
            else:
                await _bounded(self._client.delete(self._key), self._call_timeout)
        except Exception as exc:  # noqa: BLE001 (sorted by _failed)
            self._failed(exc)

    async def __aenter__(self) -> None:
        await self.acquire(1)

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        return None

    def __call__(self, func: Callable[..., Awaitable[_T]]) -> Callable[..., Awaitable[_T]]:
        """``@bucket`` on an ``async def``: each call takes one token, then runs it."""
        if not inspect.iscoroutinefunction(func):
            raise TypeError("a RedisTokenBucket decorates an async function, not "
                            f"{type(func).__name__}")

        @functools.wraps(func)
        async def limited(*args: Any, **kwargs: Any) -> _T:
            await self.acquire(1)
            return await func(*args, **kwargs)

        return limited


# ====================================================================== the breaker store
#
# One breaker's shared state is one Redis hash, KEYS[1]: s (0 closed, 1 open, 2 half-open),
# o (opened at, server microseconds), g (the generation: changes at every transition, strictly
# increasing: max(g + 1, now), so it never repeats even after the key expired or the server lost
# it), f (consecutive failures, closed), k (successes of probes, half-open). A hash that does
# not exist is a closed breaker with no failures. The probes of a half-open breaker are leases
# in a sorted set, KEYS[2] (member: the probe's id, score: the instant its lease expires), so a
# probe whose process died is reclaimed when its lease runs out. Both keys share a Redis
# Cluster hash tag. Every script replies with the state after it ran:
#   {transition (the state it left, or -1), granted (a probe slot), s, o, g, f, now}
# An outcome names the generation its call was admitted in: an outcome of an older generation
# (the breaker moved on meanwhile) changes nothing.

_BK_PRELUDE = """
local function clock(arg)
    if arg ~= '' then return tonumber(arg) end
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function f(x) return string.format('%.17g', x) end
local h, pz = KEYS[1], KEYS[2]
local v = redis.call('HMGET', h, 's', 'o', 'g', 'f', 'k')
local s, o, g = tonumber(v[1]) or 0, tonumber(v[2]) or 0, tonumber(v[3]) or 0
local fails, succ = tonumber(v[4]) or 0, tonumber(v[5]) or 0
local trans = -1
local function move(now, to)
    if trans < 0 then trans = s end
    s = to
    g = math.max(g + 1, now)
    fails, succ = 0, 0
    if to == 1 then o = now end
    redis.call('DEL', pz)
end
local function save(ttl)
    redis.call('HSET', h, 's', s, 'o', f(o), 'g', f(g), 'f', fails, 'k', succ)
    redis.call('PEXPIRE', h, ttl)
end
local function reply(now, granted)
    return {trans, granted, s, f(o), f(g), fails, f(now)}
end
"""

# STATE(now): the state, unchanged.
_BK_STATE = _BK_PRELUDE + """
return reply(clock(ARGV[1]), 0)
"""

# FAILURE(gen, threshold, ttl, now): a counted failure of a call admitted closed in `gen`.
_BK_FAILURE = _BK_PRELUDE + """
local now = clock(ARGV[4])
if s == 0 and g == tonumber(ARGV[1]) then
    fails = fails + 1
    if fails >= tonumber(ARGV[2]) then move(now, 1) end
    save(ARGV[3])
end
return reply(now, 0)
"""

# SUCCESS(gen, ttl, now): a success of a call admitted closed in `gen`: the failures are no
# longer consecutive.
_BK_SUCCESS = _BK_PRELUDE + """
local now = clock(ARGV[3])
if s == 0 and g == tonumber(ARGV[1]) and fails > 0 then
    fails = 0
    save(ARGV[2])
end
return reply(now, 0)
"""

# PROBE(id, max, recovery, lease, ttl, now): an open breaker past its recovery time turns
# half-open; a half-open one grants a probe slot (a lease until now + lease) if fewer than
# `max` unexpired leases are out.
_BK_PROBE = _BK_PRELUDE + """
local now = clock(ARGV[6])
local granted = 0
if s == 1 and now >= o + tonumber(ARGV[3]) then
    move(now, 2)
    save(ARGV[5])
end
if s == 2 then
    redis.call('ZREMRANGEBYSCORE', pz, '-inf', f(now))
    if redis.call('ZCARD', pz) < tonumber(ARGV[2]) then
        redis.call('ZADD', pz, f(now + tonumber(ARGV[4])), ARGV[1])
        redis.call('PEXPIRE', pz, ARGV[5])
        granted = 1
    end
end
return reply(now, granted)
"""

# PROBE_DONE(id, outcome, gen, success_threshold, ttl, now): a probe's lease goes back; its
# outcome (1 success, 0 counted failure, -1 neither) decides if the breaker is still half-open
# in `gen`: success_threshold successes close it, a failure opens it again.
_BK_PROBE_DONE = _BK_PRELUDE + """
local now = clock(ARGV[6])
redis.call('ZREM', pz, ARGV[1])
if s == 2 and g == tonumber(ARGV[3]) then
    local out = tonumber(ARGV[2])
    if out == 1 then
        succ = succ + 1
        if succ >= tonumber(ARGV[4]) then move(now, 0) end
        save(ARGV[5])
    elseif out == 0 then
        move(now, 1)
        save(ARGV[5])
    end
end
return reply(now, 0)
"""

# FORCE(state, ttl, now): open(), close() or half_open() by hand: a transition, with its counts
# cleared, even to the same state (open again: the recovery time counts from now).
_BK_FORCE = _BK_PRELUDE + """
local now = clock(ARGV[3])
move(now, tonumber(ARGV[1]))
save(ARGV[2])
return reply(now, 0)
"""

# Rate mode. The window lives in the same hash, only while closed, and belongs to one
# generation: wg names it (a transition, closing included, empties it without touching it), w
# its shape ("n<calls>" or "t<bucket width in us>"; a process with another shape starts it over
# with its own). A count window keeps wn/wf/ws (calls, failures, slow calls in it), wp (the next
# position) and one field per position, r0..r<N-1> (1 failure + 2 slow); while it is not full,
# wp == wn, so a position not yet written since the window began is never read. A time window
# is 20 buckets, b0..b19, each window_time / 20 wide (the shape's width), each "<generation>
# <index> <calls> <failures> <slow>" (index: the server's time in us // width; a bucket of
# another generation, or 20 widths old, is empty), summed when read.
#
# OUTCOME(sgen, k, xgen, x, shape, min_calls, failure_rate, slow_rate, ttl, now): k successes of
# calls admitted closed in generation sgen (batched by the caller), then one outcome x ("": none;
# else 1 failure + 2 slow) of a call admitted closed in xgen, each entering the window (if still
# closed in that generation) and opening the breaker when the window holds min_calls and
# failures / calls >= failure_rate or slow / calls >= slow_rate ("": no slow calls). With k = 0
# and x = "" it only reads: the reply's f is then (closed) the window's failures at `now`.
# Only a time window's successes come in batches (k > 1; a count window takes one outcome at a
# time): they all go to the bucket of `now`, checked after the first and when the window reaches
# min_calls; in between and after, each success only lowers both shares, so no other point
# could open it.
_BK_OUTCOME = _BK_PRELUDE + """
local now = clock(ARGV[10])
local shape = ARGV[5]
local W = tonumber(string.sub(shape, 2))
local timed = string.sub(shape, 1, 1) == 't'
local minc, frate, srate = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local wv = redis.call('HMGET', h, 'w', 'wg', 'wn', 'wf', 'ws', 'wp')
local same = s == 0 and wv[1] == shape
local gs = f(g)
local wn, wf, ws, wp = 0, 0, 0, 0
local K, bk, dirty = 0, {}, {}
if timed then
    K = math.floor(now / W)
    local names = {}
    for i = 0, 19 do names[i + 1] = 'b' .. i end
    local raw = redis.call('HMGET', h, unpack(names))
    for i = 0, 19 do
        local b = {false, 0, 0, 0}
        if same and raw[i + 1] then
            local bg, bi, bn, bf, bs = string.match(raw[i + 1], '^(%S+) (%S+) (%S+) (%S+) (%S+)$')
            if bg == gs and tonumber(bi) > K - 20 then
                b = {tonumber(bi), tonumber(bn), tonumber(bf), tonumber(bs)}
                wn, wf, ws = wn + b[2], wf + b[3], ws + b[4]
            end
        end
        bk[i] = b
    end
elseif same and wv[2] == gs then
    wn, wf, ws, wp = tonumber(wv[3]), tonumber(wv[4]), tonumber(wv[5]), tonumber(wv[6])
end
local function wadd(bits, m)
    local fl = bits % 2
    local sl = (bits - fl) / 2
    if timed then
        local i = K % 20
        local b = bk[i]
        if b[1] ~= K then
            wn, wf, ws = wn - b[2], wf - b[3], ws - b[4]
            b = {K, 0, 0, 0}
            bk[i] = b
        end
        b[2], b[3], b[4] = b[2] + m, b[3] + fl * m, b[4] + sl * m
        wn, wf, ws = wn + m, wf + fl * m, ws + sl * m
        dirty[i] = b
        return
    end
    -- a count window: one outcome at a time (its successes are never batched)
    if wn == W then
        local o = tonumber(redis.call('HMGET', h, 'r' .. wp)[1]) or 0
        wn, wf, ws = wn - 1, wf - o % 2, ws - (o - o % 2) / 2
    end
    redis.call('HSET', h, 'r' .. wp, bits)
    wp = (wp + 1) % W
    wn, wf, ws = wn + 1, wf + fl, ws + sl
end
local function check()
    if wn >= minc and wn > 0 and (wf / wn >= frate or (srate and ws / wn >= srate)) then
        local n1, f1 = wn, wf
        move(now, 1)
        fails, succ = f1, n1 - f1
    end
end
local changed = false
local k = tonumber(ARGV[2])
if k > 0 and s == 0 and gs == ARGV[1] then
    changed = true
    local done, step = 0, 1
    while done < k and s == 0 do
        step = math.min(step, k - done)
        wadd(0, step)
        done = done + step
        check()
        step = k - done
        if wn < minc then step = minc - wn end
        if not timed then step = 1 end
    end
end
if ARGV[4] ~= '' and s == 0 and f(g) == ARGV[3] then
    changed = true
    wadd(tonumber(ARGV[4]), 1)
    check()
end
if s == 0 then fails = wf end
if changed then
    if s == 0 then
        local t = {'w', shape, 'wg', gs, 'wn', wn, 'wf', wf, 'ws', ws, 'wp', wp}
        for i, b in pairs(dirty) do
            t[#t + 1] = 'b' .. i
            t[#t + 1] = gs .. ' ' .. f(b[1]) .. ' ' .. f(b[2]) .. ' ' .. f(b[3]) .. ' ' .. f(b[4])
        end
        redis.call('HSET', h, unpack(t))
    end
    save(ARGV[9])
end
return reply(now, 0)
"""

_BK_SCRIPTS = {name: (src, hashlib.sha1(src.encode()).hexdigest())
               for name, src in (("state", _BK_STATE), ("failure", _BK_FAILURE),
                                 ("success", _BK_SUCCESS), ("probe", _BK_PROBE),
                                 ("probe_done", _BK_PROBE_DONE), ("force", _BK_FORCE),
                                 ("outcome", _BK_OUTCOME))}
_BK_NARGS = {"state": 1, "failure": 4, "success": 3, "probe": 6, "probe_done": 6, "force": 3,
             "outcome": 10}

_HASH_TAG_RE = re.compile(r"[^{]*\{[^}]+\}")


class CircuitUnavailableError(CircuitOpenError):
    """A RedisCircuitBreaker with ``on_error="deny"`` rejects a call because Redis could not
    answer. A ``CircuitOpenError``: code that handles rejections handles this one too."""

    def __str__(self) -> str:
        br = self.args[0] if self.args else None
        name = getattr(br, "name", None)
        who = "unnamed circuit breaker" if name is None else f"circuit breaker {name!r}"
        return f"{who} could not reach Redis and denies calls (on_error='deny')"


class RedisBreakerStore(_Scripted):
    """Where a ``RedisCircuitBreaker`` keeps its state: one Redis hash (and, while half-open, a
    sorted set of probe leases) shared by every process and host that opens the same key.
    ``aiofast.CircuitBreaker(..., store=store)`` returns ``store.make_breaker(...)``, that
    ``RedisCircuitBreaker``.

    ``max_staleness`` (seconds, default 1.0): how old a process's local view of the state may
    be before a call asks Redis again. A call admitted closed on a fresh view costs no round
    trip; so a process may admit calls for up to ``max_staleness`` seconds (plus one round
    trip) after another process opened the breaker. 0 asks on every call.

    ``probe_lease`` (seconds, default 30.0): a half-open probe holds its slot until its outcome
    is recorded or this much time has passed (then the slot is free again: a process that died
    during its probe does not block the others for ever). A probe that outlasts its lease lets
    one more through.

    ``on_error``: when Redis cannot answer within ``call_timeout`` seconds, a call to admit is
    ``"raise"``: refused with ``RedisUnavailableError``; ``"allow"``: admitted (its outcome is
    not recorded); ``"deny"``: rejected with ``CircuitUnavailableError`` (a
    ``CircuitOpenError``). For the next ``retry_interval`` seconds the policy applies without
    asking Redis again; then the next call asks. Recording an outcome never raises over the
    call's own result: an outcome Redis did not get is lost (counted in ``stats()``) and the
    next call asks Redis. Configuration errors (authentication, ACL, a key holding something
    else) always raise.

    A store serves one breaker. The key (after ``prefix``) gets a Redis Cluster hash tag
    (``{key}``) unless it has one.
    """

    __slots__ = ("_name", "_max_staleness", "_probe_lease", "_retry_interval", "_breaker",
                 "_now")

    def __init__(self, client: Any, key: str, *, prefix: str = "aiofast:cb:",
                 max_staleness: float = 1.0, probe_lease: float = 30.0,
                 on_error: str = "raise", call_timeout: float | None = 1.0,
                 retry_interval: float = 0.1, multiplex: bool = True) -> None:
        self._check(key, prefix, on_error, call_timeout)
        ms = _real(max_staleness, "max_staleness")
        if not (ms >= 0 and math.isfinite(ms)):
            raise ValueError(f"max_staleness must be a finite number of seconds >= 0, got "
                             f"{max_staleness!r}")
        pl = _real(probe_lease, "probe_lease")
        if not (pl > 0 and math.isfinite(pl)):
            raise ValueError(f"probe_lease must be a finite number of seconds > 0, got "
                             f"{probe_lease!r}")
        ri = _real(retry_interval, "retry_interval")
        if not (ri >= 0 and math.isfinite(ri)):
            raise ValueError(f"retry_interval must be a finite number >= 0, got "
                             f"{retry_interval!r}")
        full = prefix + key
        if not _HASH_TAG_RE.match(full):
            full = prefix + "{" + key + "}"
        self._name = key
        self._key = full
        self._setup(client, (full, full + ":probes"), _BK_SCRIPTS, _BK_NARGS, multiplex)
        self._max_staleness = ms
        self._probe_lease = pl
        self._on_error = on_error
        self._call_timeout = call_timeout
        self._retry_interval = ri
        self._breaker: Any = None
        self._now = ""  # tests only: the server's clock, in microseconds, as a string

    def make_breaker(self, *args: Any, **options: Any) -> RedisCircuitBreaker:
        """The breaker ``aiofast.CircuitBreaker(*args, store=self, **options)`` returns:
        ``RedisCircuitBreaker(*args, store=self, **options)``.

        This is the hook ``CircuitBreaker(..., store=s)`` calls on any store ``s``: a store
        type of one's own works there if it has a ``make_breaker`` taking CircuitBreaker's
        other arguments and returning its breaker."""
        return RedisCircuitBreaker(*args, store=self, **options)

    @property
    def max_staleness(self) -> float:
        return self._max_staleness

    @property
    def probe_lease(self) -> float:
        return self._probe_lease

    def __repr__(self) -> str:
        return (f"<aiofast.redis.RedisBreakerStore object at {id(self):#x} [key:{self._key}, "
                f"max_staleness:{self._max_staleness}, on_error:{self._on_error}]>")


_STATES: tuple[Any, ...] = (CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN)
_NO_CLOCK = ("clock is not available with a Redis store: the fleet's times (the recovery "
             "timeout, a time window) are read on the Redis server's TIME, the one clock every "
             "process and host shares; a clock of one process cannot order the fleet's events "
             "(slow calls are timed on the event loop's clock)")
_log = logging.getLogger("aiofast.breaker")
_CoroutineType = types.CoroutineType
_get_running_loop = asyncio.get_running_loop

# the with-blocks a task is in: (breaker, ticket, loop time admitted, enclosing), innermost first
_blocks: contextvars.ContextVar[tuple[Any, Any, float, Any] | None] = contextvars.ContextVar(
    "aiofast.redis.blocks", default=None)


_NO_WITH = ("a RedisCircuitBreaker has no `with` block: admitting a call may need a round trip "
            "to Redis, which a synchronous block cannot await (use `async with breaker:`)")


def _what(func: Any) -> str:
    """What func is, for an error message: 'function len', 'int'..."""
    name = getattr(func, "__qualname__", None)
    kind = type(func).__name__
    return f"{kind} {name}" if isinstance(name, str) else kind


def _exc_spec(spec: Any) -> tuple[Any, bool]:
    """(the spec, is a predicate), as CircuitBreaker reads expected_exception and exclude."""
    if isinstance(spec, type) or isinstance(spec, tuple):
        return spec, False
    return spec, True


class RedisCircuitBreaker:
    """A circuit breaker whose state is shared by every process and host through Redis
    (``store=RedisBreakerStore(client, key)``), with ``CircuitBreaker``'s arguments and
    semantics: ``failure_threshold`` consecutive failures, counted fleet-wide, or (rate mode,
    ``failure_rate``) a failure share or slow-call share over a window of the fleet's calls,
    open it for everyone; after ``recovery_timeout`` seconds (on the Redis server's clock) it
    lets probes through, at most ``half_open_max_calls`` at a time across the fleet;
    ``success_threshold`` successful probes close it, a failed one (in rate mode, a slow one
    too) opens it again.

    ``aiofast.CircuitBreaker(..., store=RedisBreakerStore(client, key))`` returns one too (the
    store's ``make_breaker``): it is a ``RedisCircuitBreaker``, not a ``CircuitBreaker``.

    Use it as ``CircuitBreaker``: ``@breaker`` on an ``async def``, ``async with breaker:``,
    ``await breaker.call(fn, *args, **kwargs)`` (``fn`` an async or a plain function: a plain
    one runs inline once admitted, its exception counted as an async function's). Admitting a
    call may need a round trip, so there is no synchronous way in: ``@breaker`` on a plain
    ``def`` and ``with breaker:`` raise ``TypeError``. ``fallback(*args, **kwargs)`` serves a
    rejected call as ``CircuitBreaker``'s does (its result awaited if awaitable), a call
    rejected by ``on_error="deny"`` too; not ``async with`` blocks.

    Rate mode: ``failure_rate``, ``window`` (the fleet's last N calls, in the order Redis
    received their outcomes) or ``window_time`` (the last T seconds of the server's TIME, as 20
    buckets of T/20), ``min_calls``, ``slow_call_duration`` and ``slow_call_rate`` mean what they
    mean for ``CircuitBreaker``; the window is kept in the breaker's Redis hash, changed by one
    script per outcome. A call's duration (slow or not) is measured by the process that made
    it, on its event loop's clock. Every process sharing a key should give the same window: a
    process with another one starts the window over with its own.

    ``clock=`` is refused (``ValueError``): the fleet's times are the Redis server's TIME, the
    one clock every process shares; a clock of one process cannot order the fleet's events.
    ``failure_threshold=None`` (the default) is CircuitBreaker's default, 5, left unsaid so
    that ``failure_rate`` may be given (giving both is refused, as CircuitBreaker refuses it).

    Each process keeps a local view of the state, at most ``store.max_staleness`` seconds old
    when a call is admitted: a call admitted closed on a fresh view costs no round trip; an
    open breaker rejects locally until its recovery time; a half-open one asks Redis for every
    probe. Outcomes of closed calls: in consecutive-failure mode a failure costs one round trip,
    a success one only when it can change something (the shared failure count was not 0). In
    rate mode a failure or a slow call costs one; with a count window so does every success
    (the window is the fleet's calls in order); with a time window the successes of this
    process are held locally and sent together, with its next round trip or at most
    ``max_staleness`` seconds after the first of them (a timer): a success is counted up to
    ``max_staleness`` late, in the bucket of the moment it reaches Redis (and it leaves the
    window as much later), so the shares Redis judges may lead the true ones by that much.
    ``max_staleness=0`` sends every outcome at once. Successes still held when the event loop
    ends are not sent (``await breaker.refresh()`` sends them).
    The state, ``failure_count`` and ``remaining`` properties read the local view;
    ``await refresh()`` brings it up to date (and sends the successes held).

    Listeners (``add_listener(fn)``: ``fn(breaker, old_state, new_state)``) run in the process
    whose call made the transition (its script's reply says so), at once. Other processes see
    the new state in their local view within ``max_staleness`` seconds (or at once, when one of
    their own calls meets it in Redis), without their listeners being called.
    """

    __slots__ = ("_store", "_proto", "_threshold", "_recovery", "_success_threshold",
                 "_half_max", "_expected", "_expected_pred", "_exclude", "_exclude_pred",
                 "_listeners", "_s", "_o", "_g", "_f", "_fetched", "_fresh_until",
                 "_open_until", "_offline_until", "_probes_here", "_recovery_arg", "_lease_arg",
                 "_ttl_arg", "_threshold_arg", "_success_arg", "_half_arg", "_totals",
                 "_fast_calls", "_fast_successes", "_quiet", "_rate", "_slow", "_fallback",
                 "_batch", "_rate_args", "_pend", "_pend_g", "_flush_at", "_flush_task",
                 "__weakref__")

    def __init__(self, failure_threshold: int | None = None, recovery_timeout: float = 30.0,
                 *, store: RedisBreakerStore, success_threshold: int = 1,
                 half_open_max_calls: int = 1, expected_exception: Any = None,
                 exclude: Any = (), failure_rate: float | None = None, window: int | None = None,
                 window_time: float | None = None, min_calls: int | None = None,
                 slow_call_duration: float | None = None, slow_call_rate: float | None = None,
                 fallback: Callable[..., Any] | None = None, name: str | None = None,
                 clock: Any = None) -> None:
        if clock is not None:
            raise ValueError(_NO_CLOCK)
        if not isinstance(store, RedisBreakerStore):
            raise TypeError(f"store must be a RedisBreakerStore, got {type(store).__name__}")
        # the arguments checked as CircuitBreaker checks them (the same errors); failure_threshold
        # None is its default (5), left out so that rate mode may be asked for
        given = {} if failure_threshold is None else {"failure_threshold": failure_threshold}
        make: Any = CircuitBreaker   # (mypy cannot follow **given through its overloads)
        proto: CircuitBreaker = make(
            recovery_timeout=recovery_timeout, success_threshold=success_threshold,
            half_open_max_calls=half_open_max_calls, expected_exception=expected_exception,
            exclude=exclude, failure_rate=failure_rate, window=window, window_time=window_time,
            min_calls=min_calls, slow_call_duration=slow_call_duration,
            slow_call_rate=slow_call_rate, fallback=fallback, name=name, **given)
        self._proto = proto
        if store._breaker is not None and store._breaker() is not None:
            raise ValueError("this RedisBreakerStore already serves a breaker: give each "
                             "breaker a store of its own")
        store._breaker = weakref.ref(self)
        self._store = store
        self._threshold = proto.failure_threshold
        self._recovery = proto.recovery_timeout
        self._fallback = proto.fallback
        self._rate = proto.failure_rate is not None
        self._slow = proto.slow_call_duration    # seconds, or None
        # a time window's successes are batched (see the class's docstring); a count window's
        # are not: its order is the fleet's
        self._batch = (self._rate and proto.window_time is not None
                       and store._max_staleness > 0)
        self._rate_args: tuple[str, ...] = ()
        rate, span = proto.failure_rate, proto.window_time
        if rate is not None:
            shape = "n" + str(proto.window) if span is None else "t" + _fmt(span * 1e6 / 20)
            srate = proto.slow_call_rate
            self._rate_args = (shape, str(proto.min_calls), _fmt(rate),
                               "" if srate is None else _fmt(srate))
        # a fast-path success needs no round trip (consecutive mode, no slow calls, no shared
        # failure count): kept up to date by _take
        self._quiet = not self._rate and self._slow is None
        self._pend = 0                   # successes held (time window), of generation _pend_g
        self._pend_g = ""
        self._flush_at: tuple[Any, Any] | None = None   # (loop, TimerHandle) of the flush
        self._flush_task: asyncio.Task[None] | None = None
        self._success_threshold = int(success_threshold)
        self._half_max = int(half_open_max_calls)
        self._expected, self._expected_pred = _exc_spec(
            Exception if expected_exception is None else expected_exception)
        self._exclude, self._exclude_pred = _exc_spec(exclude)
        if self._exclude == ():
            self._exclude = None
        self._listeners: list[Callable[..., Any]] = []
        # the local view: state, opened at (server us, str), generation (str), failures
        self._s = 0
        self._o = "0"
        self._g = "0"
        self._f = 0
        self._fetched = -math.inf        # loop time when the request that brought it left
        self._fresh_until = -math.inf    # closed, fresh and online until then: no round trip
        self._open_until = -math.inf     # loop time when an open breaker may let a probe go
        self._offline_until = -math.inf  # loop time until which Redis is not asked again
        self._probes_here = 0            # probes of this process in flight
        self._recovery_arg = _fmt(self._recovery * 1e6)
        self._lease_arg = _fmt(store._probe_lease * 1e6)
        # an idle breaker's keys live a day (or 10 recovery timeouts, if longer)
        self._ttl_arg = str(max(86_400_000, math.ceil(self._recovery * 10_000)))
        self._threshold_arg = str(self._threshold)
        self._success_arg = str(self._success_threshold)
        self._half_arg = str(self._half_max)
        self._fast_calls = self._fast_successes = 0   # (the closed calls with no round trip)
        self._totals = dict.fromkeys(("calls", "successes", "failures", "ignored",
                                      "slow_calls", "rejections", "state_changes",
                                      "round_trips", "store_errors"), 0)

    # ------------------------------------------------------------------ properties

    @property
    def store(self) -> RedisBreakerStore:
        return self._store

    @property
    def name(self) -> str | None:
        return self._proto.name

    @property
    def failure_threshold(self) -> int:
        return self._threshold

    @property
    def recovery_timeout(self) -> float:
        return self._recovery

    @property
    def success_threshold(self) -> int:
        return self._success_threshold

    @property
    def half_open_max_calls(self) -> int:
        return self._half_max

    @property
    def failure_rate(self) -> float | None:
        value: float | None = self._proto.failure_rate
        return value

    @property
    def window(self) -> int | None:
        value: int | None = self._proto.window
        return value

    @property
    def window_time(self) -> float | None:
        value: float | None = self._proto.window_time
        return value

    @property
    def min_calls(self) -> int | None:
        value: int | None = self._proto.min_calls
        return value

    @property
    def slow_call_duration(self) -> float | None:
        return self._slow

    @property
    def slow_call_rate(self) -> float | None:
        value: float | None = self._proto.slow_call_rate
        return value

    @property
    def fallback(self) -> Callable[..., Any] | None:
        return self._fallback

    @property
    def state(self) -> Any:
        """The CircuitState in the local view (OPEN past its recovery time reads HALF_OPEN:
        the next call asks for a probe slot)."""
        if self._s == 1 and self._remaining() <= 0:
            return _STATES[2]
        return _STATES[self._s]

    @property
    def failure_count(self) -> int:
        """The fleet's consecutive failures (rate mode: the failures in the window), as the
        local view last saw them."""
        return self._f

    @property
    def remaining(self) -> float:
        """Seconds until an open breaker lets a probe through (local view), else 0.0."""
        return max(0.0, self._remaining()) if self._s == 1 else 0.0

    def _remaining(self) -> float:
        try:
            now = asyncio.get_running_loop().time()
        except RuntimeError:
            import time
            now = time.monotonic()
        return self._open_until - now

    @property
    def listeners(self) -> tuple[Callable[..., Any], ...]:
        return tuple(self._listeners)

    def add_listener(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Call ``fn(breaker, old_state, new_state)`` on every transition this process makes;
        returns fn. A listener that raises is logged (logger 'aiofast.breaker')."""
        if not callable(fn):
            raise TypeError(f"a listener must be callable, got {type(fn).__name__}")
        self._listeners.append(fn)
        return fn

    def remove_listener(self, fn: Callable[..., Any]) -> None:
        self._listeners.remove(fn)

    def stats(self) -> dict[str, Any]:
        """A dict: the local view (state, failure_count) and this process's totals: calls,
        successes, failures, ignored, slow_calls, rejections, state_changes (made here),
        round_trips, store_errors."""
        totals = dict(self._totals)
        totals["calls"] += self._fast_calls
        totals["successes"] += self._fast_successes
        return {"state": self.state, "failure_count": self._f, **totals}

    def __repr__(self) -> str:
        return (f"<aiofast.redis.RedisCircuitBreaker object at {id(self):#x} "
                f"[name:{self.name!r}, state:{_STATES[self._s].value}, key:{self._store._key}]>")

    # ------------------------------------------------------------------ the round trips

    async def _ask(self, name: str, *args: str) -> list[Any] | None:
        """Run one script, take its reply into the local view (and call the listeners if it
        made a transition). Returns the reply, or None if Redis could not answer and the
        policy is not "raise" (RedisUnavailableError then)."""
        store = self._store
        loop = asyncio.get_running_loop()
        sent = loop.time()
        self._totals["round_trips"] += 1
        try:
            r = await store._script(name, *args, store._now)
        except Exception as exc:  # noqa: BLE001 (sorted by _failed)
            self._totals["store_errors"] += 1
            self._fetched = self._fresh_until = -math.inf
            self._offline_until = loop.time() + store._retry_interval
            store._failed(exc)  # raises for "raise" and for configuration errors
            return None
        self._offline_until = -math.inf
        self._take(r, sent)
        return r  # type: ignore[no-any-return]

    def _take(self, r: list[Any], sent: float) -> None:
        trans, s, o, g, f, now = r[0], r[2], r[3], r[4], r[5], r[6]
        if isinstance(o, bytes):
            o, g, now = o.decode(), g.decode(), now.decode()
        self._s, self._o, self._g, self._f = s, o, g, f
        if self._pend and self._pend_g != g:
            self._pend = 0   # successes of an earlier generation: they count for nothing now
        if not self._rate and self._slow is None:
            self._quiet = not f
        self._fetched = sent
        self._fresh_until = sent + self._store._max_staleness if s == 0 else -math.inf
        if s == 1:
            # counted from when the request left: never later than the server's instant
            self._open_until = sent + (float(o) + self._recovery * 1e6 - float(now)) / 1e6
        if trans >= 0:
            self._totals["state_changes"] += 1
            old, new = _STATES[trans], _STATES[s]
            for fn in list(self._listeners):
                try:
                    fn(self, old, new)
                except Exception:  # noqa: BLE001 (a listener's error is logged)
                    _log.exception("listener %r of %r raised", fn, self)

    async def refresh(self) -> None:
        """Bring the local view up to date (one round trip; it carries the successes held)."""
        await self._sync()

    def _sync(self) -> Awaitable[list[Any] | None]:
        """The round trip that refreshes the view: in rate mode OUTCOME, carrying the
        successes held."""
        if not self._rate:
            return self._ask("state")
        return self._outcome("", "")

    def _outcome(self, xgen: str, x: str) -> Awaitable[list[Any] | None]:
        """OUTCOME: the successes held, then outcome x of a call admitted in xgen (see the
        script). The successes are given up here: lost if the round trip fails."""
        k, self._pend = self._pend, 0
        if k and self._flush_at is not None:
            self._flush_at[1].cancel()   # (nothing left for it to send)
            self._flush_at = None
        return self._ask("outcome", self._pend_g, str(k), xgen, x, *self._rate_args,
                         self._ttl_arg)

    def _hold(self, gen: str) -> None:
        """A success of a time window's closed call, held: sent with the next round trip, or by
        a timer max_staleness seconds after the first one held."""
        if gen != self._g:
            return   # admitted in an earlier generation: the totals only
        if self._pend and self._pend_g != gen:
            self._pend = 0
        self._pend_g = gen
        self._pend += 1
        flush = self._flush_at
        loop = _get_running_loop()
        if flush is None or flush[0] is not loop:
            self._flush_at = (loop, loop.call_later(self._store._max_staleness,
                                                    self._flush_due, loop))

    def _flush_due(self, loop: asyncio.AbstractEventLoop) -> None:
        flush = self._flush_at
        if flush is None or flush[0] is not loop:
            return
        self._flush_at = None
        if self._pend:
            self._flush_task = loop.create_task(self._flush())

    async def _flush(self) -> None:
        if not self._pend:
            return
        try:
            await self._outcome("", "")
        except Exception:  # noqa: BLE001 (counted in store_errors; the next call asks Redis)
            pass

    async def _force(self, state: int) -> None:
        await self._ask("force", str(state), self._ttl_arg)

    async def open(self) -> None:
        """Trip the breaker now, for the whole fleet (the recovery time counts from now)."""
        await self._force(1)

    async def close(self) -> None:
        """Close the breaker and clear its counts, for the whole fleet."""
        await self._force(0)

    async def half_open(self) -> None:
        """Let probes through now, for the whole fleet."""
        await self._force(2)

    # ------------------------------------------------------------------ admission, outcome

    def _reject(self, remaining: float) -> CircuitOpenError:
        self._totals["rejections"] += 1
        return CircuitOpenError(self, max(0.0, float(remaining)))

    def _offline(self) -> tuple[str | None, str | None]:
        """Redis did not answer, a moment ago: the policy."""
        policy = self._store._on_error
        if policy == "allow":
            return None, None  # admitted, not recorded
        if policy == "raise":
            raise RedisUnavailableError(
                f"Redis did not answer for {self._store._key!r} (asked again "
                f"{self._store._retry_interval} s after the last error)")
        self._totals["rejections"] += 1
        raise CircuitUnavailableError(self, 0.0)

    async def _admit(self) -> tuple[str | None, str | None]:
        """Admit one call: its ticket (the generation it was admitted in, its probe id or
        None), or raise CircuitOpenError."""
        self._totals["calls"] += 1
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now < self._offline_until:
            return self._offline()
        if now - self._fetched >= self._store._max_staleness:
            if await self._sync() is None:
                return self._offline()
            now = loop.time()
        s = self._s
        if s == 0:
            return self._g, None
        if s == 1 and now < self._open_until:
            raise self._reject(self._open_until - now)
        if self._probes_here >= self._half_max:
            # (this process alone holds every slot: no need to ask)
            raise self._reject(0.0)
        pid = os.urandom(8).hex()
        self._probes_here += 1
        try:
            r = await self._ask("probe", pid, self._half_arg, self._recovery_arg,
                                self._lease_arg, self._ttl_arg)
        except asyncio.CancelledError:
            self._probes_here -= 1
            await self._give_back(pid)
            raise
        except BaseException:
            self._probes_here -= 1
            raise
        if r is None:
            self._probes_here -= 1
            return self._offline()
        if r[1] == 1:
            return self._g, pid
        self._probes_here -= 1
        if self._s == 0:
            return self._g, None
        if self._s == 1:
            raise self._reject(self._open_until - loop.time())
        raise self._reject(0.0)

    async def _give_back(self, pid: str) -> None:
        try:
            await self._store._script("probe_done", pid, "-1", "", self._success_arg,
                                      self._ttl_arg, self._store._now)
        except Exception:  # noqa: BLE001,S110 (the lease expires by itself)
            pass

    def _match(self, spec: Any, pred: bool, exc: BaseException, on_error: bool) -> bool:
        if not pred:
            return isinstance(exc, spec)
        try:
            return bool(spec(exc))
        except Exception:  # noqa: BLE001 (logged; decided as CircuitBreaker decides)
            what = "expected_exception" if spec is self._expected else "exclude"
            _log.exception("%s predicate %r of %r raised", what, spec, self)
            return on_error

    def _classify(self, exc: BaseException) -> int:
        """0 success, 1 failure, 2 neither, as CircuitBreaker decides: a cancellation (or
        KeyboardInterrupt, SystemExit, GeneratorExit) and what `exclude` matches are neither;
        what `expected_exception` matches is a failure; any other exception is a success (the
        dependency answered). A predicate that raises is logged; the call is then a failure
        (for `exclude`: not excluded)."""
        if not isinstance(exc, Exception) and isinstance(
                exc, (asyncio.CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit)):
            return 2
        if self._exclude is not None and self._match(self._exclude, self._exclude_pred, exc,
                                                     False):
            return 2
        return 1 if self._match(self._expected, self._expected_pred, exc, True) else 0

    async def _settle(self, ticket: tuple[str | None, str | None],
                      exc: BaseException | None, t0: float) -> None:
        """Record the outcome of the call `ticket` admitted at loop time t0 (exc None: a
        success). Never raises an error of Redis's."""
        gen, pid = ticket
        totals = self._totals
        out = 0 if exc is None else self._classify(exc)
        totals[("successes", "failures", "ignored")[out]] += 1
        slow = (self._slow is not None and out != 2
                and _get_running_loop().time() - t0 > self._slow)
        if slow:
            totals["slow_calls"] += 1
        if gen is None:
            return  # admitted while Redis could not answer: not recorded
        if pid is not None:
            self._probes_here -= 1
            # in rate mode a slow probe opens the breaker again, as a failed one does
            code = "-1" if out == 2 else "0" if out == 1 or (slow and self._rate) else "1"
            await self._report("probe_done", pid, code, gen, self._success_arg, self._ttl_arg)
        elif self._rate:
            if out == 2:
                return
            if out == 0 and not slow and self._batch:
                self._hold(gen)
                return
            try:
                await self._outcome(gen, str(out | (slow << 1)))
            except RedisUnavailableError:
                pass  # counted in store_errors; the next call asks Redis
        elif out == 1:
            await self._report("failure", gen, self._threshold_arg, self._ttl_arg)
        elif out == 0 and self._f and self._s == 0 and gen == self._g:
            await self._report("success", gen, self._ttl_arg)

    async def _report(self, name: str, *args: str) -> None:
        try:
            await self._ask(name, *args)
        except RedisUnavailableError:
            pass  # counted in store_errors; the next call asks Redis

    # ------------------------------------------------------------------ the ways to call

    async def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Admit a call of ``fn(*args, **kwargs)`` (awaited if it returns an awaitable), record
        its outcome, return its result; or, rejected, raise CircuitOpenError (return
        ``fallback(*args, **kwargs)``, awaited if awaitable, when there is a fallback)."""
        t0 = _get_running_loop().time()
        if t0 < self._fresh_until:
            self._fast_calls += 1
            ticket: tuple[str | None, str | None] | None = None   # (self._g, None)
            gen = self._g
        else:
            try:
                ticket = await self._admit()
            except CircuitOpenError:
                if self._fallback is None:
                    raise
                ticket = None
            if ticket is None:
                # rejected (not in the except block: the fallback's errors are its own)
                result = self._fallback(*args, **kwargs)  # type: ignore[misc]
                if result.__class__ is _CoroutineType or inspect.isawaitable(result):
                    result = await result
                return result
            if self._slow is not None:
                t0 = _get_running_loop().time()
        try:
            result = fn(*args, **kwargs)
            if result.__class__ is _CoroutineType or inspect.isawaitable(result):
                result = await result
        except BaseException as exc:
            await self._settle(ticket or (gen, None), exc, t0)
            raise
        if ticket is None and self._quiet:
            self._fast_successes += 1   # closed, nothing to reset: no round trip
        elif ticket is None and self._batch and self._slow is None:
            self._fast_successes += 1   # a time window's success: held
            self._hold(gen)
        else:
            await self._settle(ticket or (gen, None), None, t0)
        return result

    def __call__(self, func: Callable[..., Awaitable[_T]]) -> Callable[..., Awaitable[_T]]:
        """``@breaker`` on an ``async def``."""
        if not inspect.iscoroutinefunction(func):
            raise TypeError(
                f"a RedisCircuitBreaker decorates an async function, not {_what(func)}: "
                "admitting a call may need a round trip to Redis, which a plain function "
                "cannot await (use `await breaker.call(fn, ...)`, or make it async def)")

        @functools.wraps(func)
        async def guarded(*args: Any, **kwargs: Any) -> _T:
            return await self.call(func, *args, **kwargs)  # type: ignore[no-any-return]

        guarded.breaker = self  # type: ignore[attr-defined]
        return guarded

    def __enter__(self) -> NoReturn:
        raise TypeError(_NO_WITH)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> NoReturn:
        raise TypeError(_NO_WITH)

    async def __aenter__(self) -> RedisCircuitBreaker:
        ticket = await self._admit()
        _blocks.set((self, ticket, _get_running_loop().time(), _blocks.get()))
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        top = _blocks.get()
        if top is None or top[0] is not self:
            raise RuntimeError("RedisCircuitBreaker.__aexit__ without its __aenter__ in this "
                               "task")
        _blocks.set(top[3])
        if exc is None and exc_type is not None:
            exc = exc_type()
        await self._settle(top[1], exc, top[2])
