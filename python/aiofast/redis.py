"""aiofast.redis: a token bucket shared by every process and host through one Redis key.

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
import functools
import hashlib
import inspect
import math
import os
import re
import sys
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.exceptions as _rexc

__all__ = ["RedisTokenBucket", "RedisUnavailableError", "ON_ERROR_POLICIES"]

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

_SCRIPTS = {name: (src, hashlib.sha1(src.encode()).hexdigest())
            for name, src in (("acquire", _ACQUIRE), ("release", _RELEASE), ("peek", _PEEK))}

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

if sys.version_info >= (3, 11):
    _timeout = asyncio.timeout
else:  # redis-py depends on async_timeout there
    from async_timeout import timeout as _timeout


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
    """One pipelined connection: futures in command order, resolved by the reader task."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pool: Any, conn: Any) -> None:
        self.loop = loop
        self.pool = pool
        self.conn = conn
        self.writer = conn._writer
        self.waiters: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.lost: BaseException | None = None
        self.reader = loop.create_task(self._read(conn._reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        buf = bytearray()
        waiters = self.waiters
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    raise _rexc.ConnectionError("Redis closed the connection")
                buf += data
                pos = 0
                while pos < len(buf) and waiters:
                    try:
                        value, pos2 = _parse(buf, pos)
                    except _Incomplete:
                        break
                    pos = pos2
                    fut = waiters.popleft()
                    if not fut.done():  # (a caller that timed out or was cancelled)
                        if isinstance(value, BaseException):
                            fut.set_exception(value)
                        else:
                            fut.set_result(value)
                del buf[:pos]
        except BaseException as exc:  # noqa: BLE001 (the link is done; callers see why)
            self.close(exc)
            try:
                await self.conn.disconnect()
                await self.pool.release(self.conn)
            except BaseException:  # noqa: BLE001,S110 (nothing more to do)
                pass
            if isinstance(exc, asyncio.CancelledError):
                raise

    def close(self, exc: BaseException) -> None:
        if self.lost is None:
            if not isinstance(exc, _rexc.RedisError):
                exc = _rexc.ConnectionError(f"connection to Redis lost: {exc!r}")
            self.lost = exc
            try:
                self.writer.transport.abort()
            except Exception:  # noqa: BLE001,S110 (already closed)
                pass
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(_rexc.ConnectionError(str(self.lost)))

    def send(self, payload: bytes) -> asyncio.Future[Any]:
        fut = self.loop.create_future()
        if self.lost is not None:
            fut.set_exception(_rexc.ConnectionError(str(self.lost)))
            return fut
        self.waiters.append(fut)
        self.writer.write(payload)
        return fut


class _Links:
    """The link of one client on the running loop, (re)connected on demand."""

    def __init__(self, client: Any) -> None:
        self.pool = client.connection_pool
        self.link: _Link | None = None

    @staticmethod
    def usable(client: Any) -> bool:
        import redis.asyncio as ra
        pool = getattr(client, "connection_pool", None)
        if type(client) is not ra.Redis or pool is None:
            return False
        return str(pool.connection_kwargs.get("protocol") or 2) == "2"

    async def get(self) -> _Link:
        """The live link, or a new one (callers that find none connect each on their own: the
        first to finish installs its link, the others give their connection back)."""
        loop = asyncio.get_running_loop()
        try:
            conn = await self.pool.get_connection()
        except TypeError:  # redis-py before 5.3 wants a command name
            conn = await self.pool.get_connection("EVALSHA")
        link = self.link
        if link is not None and link.lost is None and link.loop is loop:
            await self.pool.release(conn)
            return link
        if getattr(conn, "_writer", None) is None or getattr(conn, "_reader", None) is None:
            await conn.connect()
        self.link = link = _Link(loop, self.pool, conn)
        return link


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


class RedisTokenBucket:
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
    always raise.

    ``multiplex=True`` (default): the buckets of one client share one connection of its pool,
    pipelined (see above); ``False``: every call goes through ``client.evalsha``.
    """

    __slots__ = ("_client", "_key", "_name", "_rate", "_per", "_capacity", "_interval_us",
                 "_tau_us", "_cap", "_links", "_heads", "_tau_arg", "_one_arg", "_on_error",
                 "_call_timeout", "_retry_interval", "_now",
                 "__weakref__")

    def __init__(self, client: Any, key: str, rate: float, per: float = 1.0, *,
                 capacity: float | None = None, prefix: str = "aiofast:tb:",
                 on_error: str = "raise", call_timeout: float | None = 1.0,
                 retry_interval: float = 0.1, multiplex: bool = True) -> None:
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise ValueError("key must be 1 to 200 printable ASCII characters without spaces, "
                             f"quotes or backslashes, got {key!r}")
        if not isinstance(prefix, str) or (prefix and not _KEY_RE.match(prefix)):
            raise ValueError(f"prefix must be printable ASCII like key, got {prefix!r}")
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
        if on_error not in ON_ERROR_POLICIES:
            raise ValueError(f"on_error must be one of {ON_ERROR_POLICIES}, got {on_error!r}")
        if call_timeout is not None:
            ct = _real(call_timeout, "call_timeout")
            if not (ct > 0):
                raise ValueError(f"call_timeout must be > 0 or None, got {call_timeout!r}")
        ri = _real(retry_interval, "retry_interval")
        if not (ri > 0 and math.isfinite(ri)):
            raise ValueError(f"retry_interval must be a finite number > 0, got {retry_interval!r}")
        self._client = client
        self._name = key
        self._key = prefix + key
        self._links = _links_of(client) if multiplex else None
        kb = self._key.encode()
        # each script's command up to its arguments (acquire 5, release 3, peek 2)
        self._heads = {name: b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n$1\r\n1\r\n$%d\r\n%s\r\n"
                       % (4 + nargs, _SCRIPTS[name][1].encode(), len(kb), kb)
                       for name, nargs in (("acquire", 5), ("release", 3), ("peek", 2))}
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

    @property
    def key(self) -> str:
        """The Redis key (the prefix and the name given)."""
        return self._key

    @property
    def on_error(self) -> str:
        return self._on_error

    def __repr__(self) -> str:
        return (f"<aiofast.redis.RedisTokenBucket object at {id(self):#x} "
                f"[key:{self._key}, rate:{self._rate}/{self._per}s, capacity:{self._capacity}, "
                f"on_error:{self._on_error}]>")

    # ------------------------------------------------------------------ the one round trip

    async def _script(self, name: str, *args: str, limit: float | None = None) -> Any:
        """Run one script on the bucket's key: EVALSHA, loading it once on NOSCRIPT; bounded
        by call_timeout (or `limit`, if sooner). Raises what redis-py raises (or TimeoutError)."""
        bound = self._call_timeout
        if limit is not None and bound is not None and limit < bound:
            bound = max(limit, 0.0)
        if bound is None:
            return await self._run(name, args)
        try:
            async with _timeout(bound):
                return await self._run(name, args)
        except asyncio.TimeoutError:
            # a server that does not answer in time is not trusted with the next call: drop
            # the shared connection (its callers see a ConnectionError; the next call
            # reconnects). A caller's own cancellation leaves it alone (its reply is skipped).
            link = self._links.link if self._links is not None else None
            if link is not None:
                link.close(_rexc.TimeoutError("a call to Redis timed out"))
            raise

    async def _run(self, name: str, args: tuple[str, ...]) -> Any:
        src, sha = _SCRIPTS[name]
        links = self._links
        if links is None:
            client = self._client
            try:
                return await client.evalsha(sha, 1, self._key, *args)
            except _rexc.NoScriptError:
                await client.script_load(src)
                return await client.evalsha(sha, 1, self._key, *args)
        link = links.link
        if link is None or link.lost is not None or link.loop is not asyncio.get_running_loop():
            link = await links.get()
        payload = self._heads[name] + b"".join(
            [b"$%d\r\n%s\r\n" % (len(a), a.encode() if a.__class__ is str else a)
             for a in args])
        try:
            return await link.send(payload)
        except _rexc.NoScriptError:
            await link.send(_pack("SCRIPT", "LOAD", src))
            return await link.send(payload)

    def _failed(self, exc: BaseException) -> str:
        """The policy for an error of a round trip: re-raises what must be raised, else
        returns "allow" or "deny"."""
        if isinstance(exc, _PERMANENT) or not isinstance(exc, _TRANSIENT):
            raise exc
        if self._on_error == "raise":
            raise RedisUnavailableError(
                f"Redis did not answer for {self._key!r}: {type(exc).__name__}: {exc}") from exc
        return self._on_error

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

    async def try_acquire(self, tokens: float = 1) -> bool:
        """Take ``tokens`` if they are available now and nobody waits (no reservation is
        pending); never waits. One round trip."""
        cost = self._cost(tokens)
        try:
            r = await self._script("acquire", cost, self._tau_arg, "0", "", self._now)
        except Exception as exc:  # noqa: BLE001 (sorted by _failed)
            return self._failed(exc) == "allow"
        return r[0] == 1

    async def acquire(self, tokens: float = 1, timeout: float | None = None) -> None:
        """Wait until ``tokens`` are available, take them. With ``timeout`` (seconds), raise
        ``TimeoutError`` when it passes, having taken nothing; ``timeout <= 0``: only if
        available at once; ``None``/``inf``: no limit.

        One round trip reserves the tokens and returns the instant they will have flowed in;
        the task then sleeps until that instant (one timer)."""
        cost = self._cost(tokens)
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
                if isinstance(exc, asyncio.TimeoutError) and loop.time() >= deadline:
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
        """Start over: full (deletes the key). Reservations already made keep their instants."""
        try:
            if self._call_timeout is None:
                await self._client.delete(self._key)
            else:
                async with _timeout(self._call_timeout):
                    await self._client.delete(self._key)
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
