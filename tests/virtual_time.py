"""Virtual clocks for time-dependent tests, on both loops: no real sleeping, no tolerances.

``VirtualClockLoop`` is asyncio's selector loop, ``VirtualUVLoop`` is uvloop's loop; in both,
``time()`` is a counter the loop moves itself: whenever nothing is ready to run, it jumps straight
to the next scheduled timer (exactly to its time, so ``loop.time()`` inside a callback scheduled
with ``call_at(t, ...)`` is ``t``). Tests can also move it by hand with ``loop.advance(seconds)``.
``asyncio.sleep``, ``asyncio.timeout``, ``wait_for`` all schedule through ``loop.call_at`` /
``call_later``, so they follow the virtual clock.

``VIRTUAL_LOOP_FACTORIES`` names them for pytest-asyncio: a test marked
``@pytest.mark.asyncio(loop_factories=["virtual-asyncio", "virtual-uvloop"])`` runs once on each
(tests/conftest.py offers these names only to tests that ask for them).
"""
import asyncio
import collections
import gc
import heapq
import itertools
import selectors

import uvloop


class _NoWaitSelector(selectors.DefaultSelector):
    """A selector that never blocks: time is virtual, so waiting for a timer is a jump."""

    def __init__(self, loop):
        super().__init__()
        self._vloop = loop

    def select(self, timeout=None):
        if timeout is not None and timeout > 0:
            self._vloop._jump(timeout)
        return super().select(0)


class _VirtualTime:
    """The clock of both virtual loops: time() reads _vtime; advance() moves it by hand."""

    _vtime = 0.0

    def time(self):
        return self._vtime

    def advance(self, seconds):
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._vtime += seconds
        self._advanced()

    def _advanced(self):
        pass


class VirtualClockLoop(_VirtualTime, asyncio.SelectorEventLoop):
    """asyncio's selector loop on a virtual clock."""

    def __init__(self, start=1000.0):
        self._vtime = float(start)
        super().__init__(_NoWaitSelector(self))

    def _jump(self, timeout):
        # asyncio asked to block for `timeout` (the time to its first live timer, capped at a
        # day): land exactly on that timer rather than on now + (when - now), which can round.
        scheduled = self._scheduled
        if scheduled and scheduled[0]._when - self._vtime <= timeout:
            self._vtime = max(self._vtime, scheduled[0]._when)
        else:
            self._vtime += timeout

    # ---- for tests that drive the loop step by step (the state machines); see SteppedVirtualUVLoop

    def ready_idle(self):
        """Nothing is ready to run: the loop's next iteration would jump to a timer."""
        return not self._ready

    def live_timers(self):
        """The scheduled timers not cancelled, as TimerHandles."""
        return [h for h in self._scheduled if not h.cancelled()]

    def run_due_once(self):
        """One loop iteration at the current time: fire the timers due now (and run what was
        ready), then stop; what they wake (tasks whose futures they completed) has not run yet."""
        self.call_soon(self.stop)
        self.run_forever()


class VirtualUVLoop(_VirtualTime, uvloop.Loop):
    """uvloop's loop on a virtual clock.

    uvloop's own timers run on libuv's clock, which we cannot move; so ``call_at`` and
    ``call_later`` keep their handles (asyncio.TimerHandle, cancellable as usual) in a heap of
    our own. A tick callback, kept in uvloop's ready queue while timers are pending, fires the
    timers that are due, and, when it finds nothing else ready (the loop would otherwise block),
    first jumps the clock to the earliest timer. "Nothing else ready" is read from uvloop's ready
    deque, which Python cannot name but the garbage collector can: it is the loop's only deque.
    """

    def __init__(self, start=1000.0):
        super().__init__()
        self._vtime = float(start)
        self._vtimers = []  # heap of (when, seq, TimerHandle)
        self._vseq = itertools.count()
        self._vtick = None
        deques = [r for r in gc.get_referents(self) if type(r) is collections.deque]
        if len(deques) != 1:
            raise RuntimeError(f"cannot find uvloop's ready queue ({len(deques)} deques)")
        self._vready = deques[0]

    def _advanced(self):
        if self._vtimers:
            self._vschedule()

    def call_at(self, when, callback, *args, context=None):
        if self.is_closed():
            raise RuntimeError("Event loop is closed")
        handle = asyncio.TimerHandle(when, callback, args, self, context=context)
        heapq.heappush(self._vtimers, (handle.when(), next(self._vseq), handle))
        handle._scheduled = True
        self._vschedule()
        return handle

    def call_later(self, delay, callback, *args, context=None):
        return self.call_at(self._vtime + max(delay, 0), callback, *args, context=context)

    def _timer_handle_cancelled(self, handle):
        pass  # dropped from the heap when it reaches the top

    def _vschedule(self):
        if self._vtick is None:
            self._vtick = super().call_soon(self._vtick_run)

    def _vtick_run(self):
        self._vtick = None
        heap = self._vtimers
        while heap and heap[0][2].cancelled():
            heapq.heappop(heap)
        if not heap:
            return
        if heap[0][0] > self._vtime:
            if self._vready:
                self._vschedule()  # others are ready: look again after them
                return
            self._vtime = heap[0][0]  # idle: jump to the next timer
        while heap and heap[0][0] <= self._vtime:
            handle = heapq.heappop(heap)[2]
            handle._scheduled = False
            if not handle.cancelled():
                super().call_soon(self._vfire, handle)
        if heap:
            self._vschedule()

    @staticmethod
    def _vfire(handle):
        if not handle.cancelled():
            handle._run()


class SteppedVirtualUVLoop(VirtualUVLoop):
    """VirtualUVLoop for tests that drive it step by step (run_until_complete, stop, again), with
    the same step helpers as VirtualClockLoop (ready_idle, live_timers, run_due_once).

    It differs in one place: a stopping loop does not jump its clock. uvloop's stop() takes effect
    a ready-batch later, and a tick that runs in that last batch finds nothing else ready and, in
    VirtualUVLoop, jumps to the next timer: ``run_until_complete(asyncio.sleep(1))`` with a timer
    at +5 pending returns at +5, that timer's callback queued for the next run. asyncio's virtual
    loop never jumps while stopping (its select() is not reached), so a step-driven test sees the
    two loops agree only with this guard. The tick stays queued, and jumps on the next run if the
    loop is idle there."""

    _vstopping = False

    def stop(self):
        self._vstopping = True
        super().stop()

    def run_forever(self):
        self._vstopping = False
        return super().run_forever()

    def _vtick_run(self):
        heap = self._vtimers
        if self._vstopping and not self._vready and heap and heap[0][0] > self._vtime:
            self._vtick = None
            self._vschedule()  # the loop stops after this batch: look again on the next run
            return
        super()._vtick_run()

    def ready_idle(self):
        """Nothing is ready to run but the tick: the loop's next iteration would jump."""
        tick = self._vtick
        return all(h is tick for h in self._vready)

    def live_timers(self):
        return [h for _, _, h in self._vtimers if not h.cancelled()]

    def run_due_once(self):
        """As VirtualClockLoop.run_due_once: the timers due now run (in time order), then the
        loop stops; what they wake has not run yet."""
        heap = self._vtimers

        def fire_due():
            due = []
            while heap and heap[0][0] <= self._vtime:
                handle = heapq.heappop(heap)[2]
                handle._scheduled = False
                due.append(handle)
            for handle in due:
                if not handle.cancelled():
                    handle._run()
            self.stop()

        self.call_soon(fire_due)
        self.run_forever()


async def settle_loop():
    """Run whatever is ready on the running virtual loop (either kind) until nothing is, without
    moving its clock."""
    loop = asyncio.get_running_loop()
    for _ in range(1000):
        await asyncio.sleep(0)
        if loop.ready_idle():
            return
    raise AssertionError("the loop never settled")


def new_virtual_loop():
    return VirtualClockLoop()


def new_virtual_uvloop():
    return VirtualUVLoop()


VIRTUAL_LOOP_FACTORIES = {"virtual-asyncio": VirtualClockLoop, "virtual-uvloop": VirtualUVLoop}
