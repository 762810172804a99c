"""aiofast.redis over TLS, on a real redis-server listening only on TLS (tests/redis_server.py
makes a CA and a certificate for 127.0.0.1 with openssl at test time), through redis-py's own
TLS client (``redis.asyncio.Redis(ssl=True, ssl_ca_certs=...)``), on asyncio's loop and uvloop.

- RedisTokenBucket (try_acquire, acquire with a wait, a timeout, leasing, concurrent callers)
  and RedisCircuitBreaker (a failure opening it, a probe closing it or opening it again), with
  the multiplexed connection (its replies read from the TLS stream) and without.
- A client that does not trust the server's CA, a plain client on the TLS port, a client
  without the certificate a server requires: each call ends within call_timeout, as its
  on_error policy says; nothing hangs.
- An ACL user with a password over TLS; a client certificate required by the server.

These run on real time: the TLS handshake has a timer of its own (asyncio's and uvloop's), which
a virtual clock would fire at once. What they time is bounded from below by the server's reply
(a wait is never shorter than the server asked), from above only where nothing may hang. The
timing logic itself is tested on virtual time in test_redis.py and test_redis_breaker.py.
"""
import asyncio
import math
import tempfile
import uuid

import pytest
import redis
import redis.asyncio

from aiofast import CircuitOpenError, CircuitState
from aiofast.redis import RedisBreakerStore, RedisCircuitBreaker, RedisTokenBucket, \
    RedisUnavailableError
from redis_server import RedisServer, make_ca
from test_redis_breaker import Boom, fail, ok  # the guarded functions of the breaker tests

CLOSED, OPEN = CircuitState.CLOSED, CircuitState.OPEN
POLICIES = ("raise", "allow", "deny")


def fresh():
    return "tls-" + uuid.uuid4().hex




def server_fixture(name, *config, **kw):
    """A module-scoped fixture called name: a RedisServer(*config, **kw), started, closed after
    the module's tests."""
    @pytest.fixture(scope="module", name=name)
    def fixture():
        srv = RedisServer(*config, **kw).start()
        yield srv
        srv.close()
    return fixture


tls_server = server_fixture("tls_server", tls=True)


@pytest.fixture(scope="module")
def other_ca():
    """The certificate of a CA that did not sign the server's."""
    with tempfile.TemporaryDirectory(prefix="aiofast-ca-") as d:
        yield make_ca(d, "other")


def tls_client(srv, **kw):
    kw.setdefault("ssl_ca_certs", srv.ca)
    return redis.asyncio.Redis(host="127.0.0.1", port=srv.port, ssl=True, **kw)


def assert_on_tls(obj):
    """The object's multiplexed connection is up and is a TLS one."""
    link = obj._links.link
    assert link is not None and link.lost is None
    assert link.writer.transport.get_extra_info("ssl_object") is not None


async def one_token_a_day(c, multiplex):
    """A bucket of one token a day through client c grants one acquire, then none (on the TLS
    connection when multiplexed)."""
    b = RedisTokenBucket(c, fresh(), 1, per=86400, capacity=1, multiplex=multiplex)
    assert await b.try_acquire()
    assert not await b.try_acquire()
    if multiplex:
        assert_on_tls(b)


# ------------------------------------------------------------------ the bucket

@pytest.mark.asyncio
@pytest.mark.parametrize("multiplex", [True, False])
async def test_bucket_over_tls(tls_server, multiplex):
    loop = asyncio.get_running_loop()
    async with tls_client(tls_server) as c:
        b = RedisTokenBucket(c, fresh(), 10, capacity=2, multiplex=multiplex)
        t0 = loop.time()
        assert await b.try_acquire() and await b.try_acquire()
        assert not await b.try_acquire()
        if multiplex:
            assert_on_tls(b)
        else:
            assert b._links is None
        # empty: the next token comes 0.1 s after the first was taken, so a timeout far
        # shorter than that reserves nothing and fails
        with pytest.raises(TimeoutError):
            await b.acquire(timeout=0.001)
        # a wait: 2 more tokens flow in 0.2 s after the first was taken, and the server's
        # reply says so (the loop's timer never fires before the instant reserved)
        await b.acquire(2)
        assert loop.time() - t0 >= 0.2
        assert not await b.try_acquire()
        assert await b.tokens() < 1
        await b.reset()
        assert await b.tokens() == 2.0


@pytest.mark.asyncio
@pytest.mark.parametrize("multiplex", [True, False])
async def test_bucket_lease_over_tls(tls_server, multiplex):
    async with tls_client(tls_server) as c:
        # 10 tokens per day: none flows in during the test
        b = RedisTokenBucket(c, fresh(), 10, per=86400, capacity=10, lease=4,
                             multiplex=multiplex)
        assert await b.try_acquire()
        assert b.leased == 3.0                       # one round trip took 4
        assert math.floor(await b.tokens()) == 6     # ... from the shared bucket
        assert [await b.try_acquire() for _ in range(3)] == [True] * 3
        assert b.leased == 0
        assert [await b.try_acquire() for _ in range(7)] == [True] * 6 + [False]
        assert await b.tokens() < 1


@pytest.mark.asyncio
@pytest.mark.parametrize("multiplex", [True, False])
async def test_concurrent_callers_over_tls(tls_server, multiplex):
    """Many calls in flight on one TLS connection: each reply goes to its caller."""
    async with tls_client(tls_server) as c:
        # (without multiplexing, redis-py opens a connection per caller in flight: a TLS
        # handshake each. 20 of them at once take over the default 1 s call_timeout on Python
        # 3.10 on a busy 2-core machine; this test is about replies reaching their callers, so
        # it gives those calls the time to connect)
        b = RedisTokenBucket(c, fresh(), 10, per=86400, capacity=10, multiplex=multiplex,
                             call_timeout=1.0 if multiplex else 10.0)
        got = await asyncio.gather(*(b.try_acquire() for _ in range(20)))
        assert got.count(True) == 10
        assert await b.tokens() < 1
        if multiplex:
            assert_on_tls(b)


# ------------------------------------------------------------------ the breaker

@pytest.mark.asyncio
@pytest.mark.parametrize("multiplex", [True, False])
async def test_breaker_over_tls(tls_server, multiplex):
    async with tls_client(tls_server) as c, tls_client(tls_server) as c2:
        key = fresh()
        b = RedisCircuitBreaker(2, 0.2, store=RedisBreakerStore(
            c, key, max_staleness=0, multiplex=multiplex))
        # another process's breaker on the same key
        other = RedisCircuitBreaker(2, 0.2, store=RedisBreakerStore(
            c2, key, max_staleness=0, multiplex=multiplex))
        assert await b.call(ok) == "ok" and b.state == CLOSED
        if multiplex:
            assert_on_tls(b.store)
        with pytest.raises(Boom):
            await b.call(fail)
        with pytest.raises(Boom):
            await other.call(fail)            # the shared count reaches the threshold
        assert other.state == OPEN
        with pytest.raises(CircuitOpenError):
            await b.call(ok)
        assert b.state == OPEN
        await asyncio.sleep(0.25)             # (the recovery timeout, on the server's clock)
        # a failed probe opens it again
        with pytest.raises(Boom):
            await b.call(fail)
        assert b.state == OPEN
        with pytest.raises(CircuitOpenError):
            await other.call(ok)
        await asyncio.sleep(0.25)
        assert await other.call(ok) == "ok"   # a probe that succeeds closes it for all
        assert other.state == CLOSED
        assert await b.call(ok) == "ok" and b.state == CLOSED


# ------------------------------------------------------------------ clients that cannot connect

async def each_policy_ends_in_time(client, multiplex, expect_in_error):
    """Every object and policy, on a client that cannot talk to the server: each call ends
    within call_timeout (and scheduling), as its policy says."""
    loop = asyncio.get_running_loop()
    ct = 0.3
    buckets = {p: RedisTokenBucket(client, fresh(), 1, on_error=p, call_timeout=ct,
                                   multiplex=multiplex) for p in POLICIES}
    breakers = {p: RedisCircuitBreaker(store=RedisBreakerStore(
        client, fresh(), on_error=p, call_timeout=ct, multiplex=multiplex)) for p in POLICIES}
    for _ in range(2):  # and again, on a new attempt to connect
        t0 = loop.time()
        with pytest.raises(RedisUnavailableError) as e:
            await buckets["raise"].try_acquire()
        cause = e.value.__cause__
        assert isinstance(cause, (redis.exceptions.ConnectionError, asyncio.TimeoutError,
                                  OSError))
        if expect_in_error and not isinstance(cause, asyncio.TimeoutError):
            text = f"{cause} {cause.__cause__}"
            assert any(s in text for s in expect_in_error), text
        assert await buckets["allow"].try_acquire() is True
        assert await buckets["deny"].try_acquire() is False
        with pytest.raises(RedisUnavailableError):
            await breakers["raise"].call(ok)
        assert await breakers["allow"].call(ok) == "ok"
        with pytest.raises(CircuitOpenError):
            await breakers["deny"].call(ok)
        # 6 calls, each bounded by call_timeout
        assert loop.time() - t0 <= 6 * (ct + 0.2)


@pytest.mark.asyncio
@pytest.mark.parametrize("multiplex", [True, False])
async def test_untrusted_server_certificate(tls_server, other_ca, multiplex):
    async with tls_client(tls_server, ssl_ca_certs=other_ca) as c:
        await each_policy_ends_in_time(c, multiplex, ["certificate verify failed"])
    # redis-py's own call says the same
    async with tls_client(tls_server, ssl_ca_certs=other_ca) as c:
        with pytest.raises(redis.exceptions.ConnectionError) as e:
            await c.ping()
        assert "certificate verify failed" in str(e.value)


@pytest.mark.asyncio
@pytest.mark.parametrize("multiplex", [True, False])
async def test_plain_client_on_the_tls_port(tls_server, multiplex):
    c = redis.asyncio.Redis(host="127.0.0.1", port=tls_server.port, socket_timeout=0.3)
    async with c:
        await each_policy_ends_in_time(c, multiplex, None)


# ------------------------------------------------------------------ ACL users, client certificates

tls_acl_server = server_fixture(
    "tls_acl_server",
    "user default off",
    "user alice on >s3cret ~aiofast:* -@all +evalsha +script|load +get +set +del +time "
    "+hmget +hset +pexpire +zremrangebyscore +zcard +zadd +zrem",
    tls=True)


@pytest.mark.asyncio
@pytest.mark.parametrize("multiplex", [True, False])
async def test_acl_user_with_a_password_over_tls(tls_acl_server, multiplex):
    srv = tls_acl_server
    async with tls_client(srv, username="alice", password="s3cret") as c:
        await one_token_a_day(c, multiplex)
        cb = RedisCircuitBreaker(1, 60, store=RedisBreakerStore(c, fresh(), max_staleness=0,
                                                                multiplex=multiplex))
        with pytest.raises(Boom):
            await cb.call(fail)
        with pytest.raises(CircuitOpenError):
            await cb.call(ok)
    # a wrong password is a mistake to fix: it raises whatever the policy. (Over TLS,
    # redis-py takes seconds to report it, as its own ping() does: call_timeout leaves it
    # the time.)
    async with tls_client(srv, username="alice", password="wrong") as c:
        b = RedisTokenBucket(c, fresh(), 1, on_error="allow", multiplex=multiplex,
                             call_timeout=30)
        with pytest.raises(redis.exceptions.AuthenticationError):
            await b.try_acquire()
        cb = RedisCircuitBreaker(store=RedisBreakerStore(c, fresh(), on_error="allow",
                                                         multiplex=multiplex,
                                                         call_timeout=30))
        with pytest.raises(redis.exceptions.AuthenticationError):
            await cb.call(ok)
    # redis-py drops a connection that failed to authenticate without waiting for the TLS
    # shutdown: let the loop finish closing it before the test's loop closes (else an unclosed
    # transport is reported at the loop's teardown)
    for _ in range(10):
        await asyncio.sleep(0.01)


mtls_server = server_fixture("mtls_server", client_certs=True)


@pytest.mark.asyncio
@pytest.mark.parametrize("multiplex", [True, False])
async def test_client_certificate(mtls_server, multiplex):
    srv = mtls_server
    async with tls_client(srv, ssl_certfile=srv.client_cert, ssl_keyfile=srv.client_key) as c:
        await one_token_a_day(c, multiplex)
    # without one, the server ends the connection (TLS 1.3: after the client's handshake is
    # done, so at the first command)
    async with tls_client(srv) as c:
        await each_policy_ends_in_time(c, multiplex, None)
