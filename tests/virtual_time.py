"""A virtual clock for time-dependent tests: no real sleeping, no tolerances.

``VirtualClockLoop`` is an asyncio event loop whose ``time()`` is a counter the loop advances
itself: whenever nothing is ready to run, it jumps straight to the next scheduled timer. Tests can
also move it by hand with ``loop.advance(seconds)``.
"""
import asyncio
import selectors


class _NoWaitSelector(selectors.DefaultSelector):
    """A selector that never blocks: time is virtual, so waiting for a timer is a jump."""

    def __init__(self, loop):
        super().__init__()
        self._vloop = loop

    def select(self, timeout=None):
        if timeout is not None and timeout > 0:
            self._vloop._vtime += timeout
        return super().select(0)


class VirtualClockLoop(asyncio.SelectorEventLoop):
    def __init__(self, start=1000.0):
        self._vtime = float(start)
        super().__init__(_NoWaitSelector(self))

    def time(self):
        return self._vtime

    def advance(self, seconds):
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._vtime += seconds


def new_virtual_loop():
    return VirtualClockLoop()
