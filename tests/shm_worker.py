"""A worker process on a shared TokenBucket, for tests/test_shared_bucket.py.

    python shm_worker.py accuracy NAME LOOP TASKS    prints "ready", reads "START END" from
        stdin (time.monotonic_ns values: CLOCK_MONOTONIC is the host's one clock), then TASKS
        tasks acquire() in a loop (and one try_acquire()s every millisecond) from START to END;
        prints the number admitted before END. Many tasks: requests are always in flight, so the
        bucket never idles while the process is descheduled on a loaded machine.
    python shm_worker.py spawner NAME LOOP TALLY  forks victims on request (see spawner()).
    python shm_worker.py fifo NAME LOOP                  on a virtual clock: reads commands from
        stdin, one per line: "reserve N" starts acquire(N) and answers "tat <ns>" once it has
        reserved; "run" runs the loop until every acquire finished and answers the virtual
        instants (ns) at which they did, in the order they were started.
The bucket in every mode: rate 1000/s, capacity 10 (the fifo mode: rate 4/s, capacity 2).
"""
import asyncio
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import uvloop  # noqa: E402

import aiofast  # noqa: E402


def new_loop(name):
    return uvloop.new_event_loop() if name == "uvloop" else asyncio.new_event_loop()


def accuracy(name, loop_name, tasks):
    bucket = aiofast.TokenBucket(1000, capacity=10, shared=name)
    loop = new_loop(loop_name)
    print("ready", flush=True)
    start, end = map(int, sys.stdin.readline().split())
    admitted = 0

    async def wait_until(t_ns):
        d = (t_ns - time.monotonic_ns()) / 1e9
        if d > 0:
            await asyncio.sleep(d)

    async def acquirer():
        nonlocal admitted
        await wait_until(start)
        while True:
            await bucket.acquire()
            if time.monotonic_ns() >= end:
                return   # reserved before END, admitted after it: not counted
            admitted += 1

    async def trier():
        nonlocal admitted
        await wait_until(start)
        while time.monotonic_ns() < end:
            if bucket.try_acquire() and time.monotonic_ns() < end:
                admitted += 1
            await asyncio.sleep(0.001)

    async def main():
        # enough requests in flight that the bucket never idles while a worker is descheduled
        await asyncio.gather(*[acquirer() for _ in range(tasks)], trier())

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    print(admitted, flush=True)


def spawner(name, loop_name, tally):
    """Forks victims on request: each line "fork" on stdin forks a child that runs acquire() /
    try_acquire() as fast as the bucket allows, appending one byte to the file `tally` per token
    taken, until it is killed; the child's pid is printed. Children are reaped automatically."""
    import signal

    bucket = aiofast.TokenBucket(1000, capacity=10, shared=name)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    fd = os.open(tally, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    async def victim():
        i = 0
        while True:
            i += 1
            if i % 3 == 0:
                if bucket.try_acquire():
                    os.write(fd, b"t")
                else:
                    await asyncio.sleep(0.0005)
            else:
                await bucket.acquire()
                os.write(fd, b"a")

    for line in sys.stdin:
        pid = os.fork()
        if pid == 0:
            new_loop(loop_name).run_until_complete(victim())
            os._exit(0)
        print(pid, flush=True)


def fifo(name, loop_name):
    from virtual_time import VirtualClockLoop, VirtualUVLoop

    loop = VirtualUVLoop() if loop_name == "uvloop" else VirtualClockLoop()
    bucket = aiofast.TokenBucket(4, capacity=2, shared=name,
                                 _clock=lambda: round(loop.time() * 1e9))
    done_at = []
    tasks = []

    async def one(n, slot):
        await bucket.acquire(n)
        done_at[slot] = round(loop.time() * 1e9)

    async def settle():
        for _ in range(3):
            await asyncio.sleep(0)

    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "reserve":
            done_at.append(None)
            tasks.append(loop.create_task(one(float(cmd[1]), len(done_at) - 1)))
            loop.run_until_complete(settle())
            print("tat", bucket._tat(), bucket.waiting, flush=True)
        elif cmd[0] == "run":
            loop.run_until_complete(asyncio.gather(*tasks))
            print("done", *done_at, flush=True)
            break
    loop.close()


if __name__ == "__main__":
    mode, name, loop_name = sys.argv[1:4]
    if mode == "accuracy":
        accuracy(name, loop_name, int(sys.argv[4]))
    elif mode == "spawner":
        spawner(name, loop_name, sys.argv[4])
    else:
        fifo(name, loop_name)
