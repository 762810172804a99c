"""A small pure-Python model of aiofast.CircuitBreaker's state machine, for the hypothesis test.

It restates the rules of docs/breaker.md, written for clarity rather than speed: the same
arithmetic (IEEE doubles) so that times, rates and buckets compare exactly.
"""
import math
from collections import deque

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
SUCCESS, FAILURE, IGNORED = "success", "failure", "ignored"
NBUCKETS = 20


class Ticket:
    def __init__(self, gen, t0, probe):
        self.gen, self.t0, self.probe = gen, t0, probe


class Model:
    def __init__(self, failure_threshold=5, recovery_timeout=30.0, success_threshold=1,
                 half_open_max_calls=1, failure_rate=None, window=None, window_time=None,
                 min_calls=None, slow_call_duration=None, slow_call_rate=None):
        self.failure_threshold = failure_threshold
        self.recovery_timeout = float(recovery_timeout)
        self.success_threshold = success_threshold
        self.half_open_max = half_open_max_calls
        self.rate_mode = failure_rate is not None
        self.failure_rate = failure_rate
        self.time_mode = window_time is not None
        self.window = None if self.time_mode or not self.rate_mode else (window or 100)
        self.window_time = window_time
        if self.rate_mode:
            self.min_calls = min_calls if min_calls is not None else (
                10 if self.time_mode else self.window)
        self.slow_mode = slow_call_duration is not None
        self.slow_duration = slow_call_duration
        self.slow_rate = 1.0 if slow_call_rate is None else slow_call_rate
        self.state = CLOSED
        self.gen = 0
        self.opened_at = 0.0
        self.failures = self.successes = self.probes = 0
        self.totals = dict(calls=0, successes=0, failures=0, ignored=0, slow_calls=0,
                           rejections=0, state_changes=0)
        self.events = []
        self._reset_window()

    # ---- window
    def _reset_window(self):
        self.ring = deque(maxlen=self.window) if self.window else None
        self.buckets = [[None, 0, 0, 0] for _ in range(NBUCKETS)]  # idx, n, f, s

    def _k(self, now):
        return math.floor(now / (self.window_time / NBUCKETS))

    def _window_totals(self, now):
        if not self.time_mode:
            r = list(self.ring)
            return len(r), sum(f for f, s in r), sum(s for f, s in r)
        k = self._k(now)
        live = [b for b in self.buckets if b[1] and b[0] > k - NBUCKETS]
        return sum(b[1] for b in live), sum(b[2] for b in live), sum(b[3] for b in live)

    def _window_add(self, now, fail, slow):
        if not self.time_mode:
            self.ring.append((fail, slow))
            return
        k = self._k(now)
        for b in self.buckets:
            if b[1] and b[0] <= k - NBUCKETS:
                b[1:] = [0, 0, 0]
        b = self.buckets[k % NBUCKETS]
        if b[0] != k:
            b[:] = [k, 0, 0, 0]
        b[1] += 1
        b[2] += fail
        b[3] += slow

    def _trips(self, now):
        n, f, s = self._window_totals(now)
        if n == 0 or n < self.min_calls:
            return False
        return f / n >= self.failure_rate or (self.slow_mode and s / n >= self.slow_rate)

    # ---- transitions
    def _transition(self, to, now):
        frm = self.state
        if to == OPEN:
            if frm == CLOSED and self.rate_mode:
                n, f, s = self._window_totals(now)
                self.failures, self.successes = f, n - f
            self.opened_at = now
        else:
            self.failures = self.successes = 0
            if to == CLOSED and self.rate_mode:
                self._reset_window()
        self.probes = 0
        self.state = to
        self.gen += 1
        if frm != to:
            self.totals["state_changes"] += 1
            self.events.append((frm, to))

    def admit(self, now):
        """A Ticket, or ("rejected", remaining)."""
        if self.state == OPEN:
            until = self.opened_at + self.recovery_timeout
            if now < until:
                self.totals["rejections"] += 1
                return ("rejected", until - now)
            self._transition(HALF_OPEN, now)
        probe = False
        if self.state == HALF_OPEN:
            if self.probes >= self.half_open_max:
                self.totals["rejections"] += 1
                return ("rejected", 0.0)
            self.probes += 1
            probe = True
        self.totals["calls"] += 1
        return Ticket(self.gen, now, probe)

    def record(self, t, out, now):
        slow = self.slow_mode and out != IGNORED and now - t.t0 > self.slow_duration
        self.totals[{SUCCESS: "successes", FAILURE: "failures", IGNORED: "ignored"}[out]] += 1
        self.totals["slow_calls"] += slow
        if t.gen != self.gen:
            return
        if self.state == HALF_OPEN:
            self.probes -= 1
            if out == IGNORED:
                return
            if out == FAILURE or (slow and self.rate_mode):
                self.failures += out == FAILURE
                self._transition(OPEN, now)
            else:
                self.successes += 1
                if self.successes >= self.success_threshold:
                    self._transition(CLOSED, now)
        elif self.state == CLOSED:
            if out == IGNORED:
                return
            if self.rate_mode:
                self._window_add(now, out == FAILURE, slow)
                if self._trips(now):
                    self._transition(OPEN, now)
            elif out == FAILURE:
                self.successes = 0
                self.failures += 1
                if self.failures >= self.failure_threshold:
                    self._transition(OPEN, now)
            else:
                self.failures = 0
                self.successes += 1

    def force(self, to, now):
        if self.state == OPEN and to == OPEN:
            self.opened_at = now
        elif self.state == CLOSED and to == CLOSED:
            self.failures = self.successes = 0
            if self.rate_mode:
                self._reset_window()
        elif self.state != to:
            self._transition(to, now)

    # ---- what the getters show
    def effective(self, now):
        if self.state == OPEN and now >= self.opened_at + self.recovery_timeout:
            return HALF_OPEN
        return self.state

    def counts(self, now):
        eff = self.effective(now)
        if eff != self.state:
            return 0, 0
        if eff == CLOSED and self.rate_mode:
            n, f, s = self._window_totals(now)
            return f, n - f
        return self.failures, self.successes

    def remaining(self, now):
        if self.state == OPEN and now < self.opened_at + self.recovery_timeout:
            return self.opened_at + self.recovery_timeout - now
        return 0.0

    def stats(self, now):
        f, s = self.counts(now)
        return dict(state=self.effective(now), failure_count=f, success_count=s, **self.totals)
