"""asyncpg's connection Pool, run without a PostgreSQL server: a Connection subclass that never
touches the network stands in for the real one, so the pool's own logic (its LifoQueue subclass
overriding _get and calling self._wakeup_next(self._putters), the min-size maintenance that
refills the pool after connections are lost, acquirers waiting for a free holder) runs as is.

``python asyncpg_pool_probe.py aiofast|asyncio asyncio|uvloop`` prints one JSON document: what
the pool did, to compare between asyncio's queues and aiofast's under install(). asyncpg is
imported after install(), as an application that calls install() first would, so its queue
class subclasses aiofast's LifoQueue.
"""
import asyncio
import json
import sys


def main(impl, loop_name):
    if impl == "aiofast":
        import aiofast

        aiofast.install()
    import asyncpg
    from asyncpg import connection

    from helpers import spin_until

    class Protocol:
        queries_count = 0

        def _is_cancelling(self):
            return False

    class FakeConnection(connection.Connection):
        """Just what the pool calls on a connection, without a server."""

        def __init__(self):
            self._closed = False
            self._protocol = Protocol()
            self._proxy = None
            self._pool_holder = None

        def __del__(self):
            pass

        def is_closed(self):
            return self._closed

        async def close(self, *, timeout=None):
            self.terminate()

        def terminate(self):
            self._closed = True
            holder = self._pool_holder() if self._pool_holder is not None else None
            if holder is not None:
                holder._release_on_close()

        async def reset(self, *, timeout=None):
            pass

        async def _reset(self):
            pass

        def _set_proxy(self, proxy):
            self._proxy = proxy

        def _on_release(self, stacklevel=1):
            pass

    async def connect(*args, **kwargs):
        await asyncio.sleep(0)
        return FakeConnection()

    async def scenario():
        log = []
        pool = await asyncpg.create_pool(connect=connect, connection_class=FakeConnection,
                                         min_size=2, max_size=4)
        base = type(pool._queue).__mro__[1]
        log.append(["init", pool.get_size(), f"{base.__module__}.{base.__name__}"])
        cons = [await pool.acquire() for _ in range(4)]
        log.append(["all acquired", pool.get_size(), pool.get_idle_size()])

        async def acquire():
            return await pool.acquire()

        waiter = asyncio.ensure_future(acquire())
        await spin_until(lambda: False, 20)
        log.append(["an acquirer waits", waiter.done()])
        await pool.release(cons[0])
        cons[0] = await waiter
        log.append(["it got the released one", pool.get_size()])
        for c in cons:
            await pool.release(c)
        log.append(["all released", pool.get_size(), pool.get_idle_size()])
        # every connection lost: the floor maintenance takes the disconnected holders out of the
        # queue (get_disconnected_nowait, which calls self._wakeup_next(self._putters)),
        # connects them and puts them back, until min_size
        for holder in pool._holders:
            if holder._con is not None:
                holder._con.terminate()
        log.append(["lost", pool.get_size()])
        refilled = await spin_until(lambda: pool.get_size() >= 2, 500)
        log.append(["refilled", refilled, pool.get_size()])
        # acquirers racing the maintenance for the holders
        cons = [await pool.acquire() for _ in range(4)]
        log.append(["acquired again", pool.get_size()])
        for c in cons[:2]:
            c._con.terminate()  # lost while in use: the holder goes back by itself
        for c in cons[2:]:
            await pool.release(c)
        log.append(["refilled again", await spin_until(lambda: pool.get_size() >= 2, 500)])
        async with pool.acquire() as c:
            log.append(["with", c.is_closed()])
        await pool.close()
        log.append(["closed", pool.is_closing(), pool.get_size()])
        return log

    if loop_name == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    try:
        log = loop.run_until_complete(scenario())
    finally:
        loop.close()
    print(json.dumps(log))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
