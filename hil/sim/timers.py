"""Virtual-time events for simulated devices: a seek that completes, a sample clock that ticks.

A device schedules a callback at an absolute virtual time (:meth:`Scheduler.at`) or after a delay
(:meth:`Scheduler.after`); the machine fires the callbacks in time order while virtual time
passes (:meth:`hil.sim.machine.Machine.advance`, :meth:`~hil.sim.machine.Machine.run_until_idle`),
interleaved with DMA service. Events due at the same virtual nanosecond fire in the order they
were scheduled, so a run is deterministic whatever the devices do.

A timer is *busy* by default: it keeps :meth:`~hil.sim.machine.Machine.run_until_idle` waiting,
because something the script waits for (a transfer, an interrupt) follows it. A free-running
clock that never ends by itself is scheduled with ``busy=False``: it fires while time passes but
does not keep the machine from being idle.

Nothing here touches I/O or asyncio; the scheduler does not know the clock, the machine passes
the current time in.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import field

from hil.errors import DeviceError
from hil.records import dataclass

#: what a timer calls: it gets the virtual time the event was scheduled for (the machine's
#: clock may be later when a bus-holding DMA burst delayed the event; devices that care use this)
TimerCallback = Callable[[int], None]


@dataclass(order=True)
class Timer:
    """One scheduled event. Ordered by (time, scheduling sequence): ties fire first-scheduled first."""

    when_ns: int
    seq: int
    callback: TimerCallback = field(compare=False)
    busy: bool = field(default=True, compare=False)
    name: str = field(default="", compare=False)
    cancelled: bool = field(default=False, compare=False)
    fired: bool = field(default=False, compare=False)

    @property
    def pending(self) -> bool:
        return not (self.cancelled or self.fired)


class Scheduler:
    """A min-heap of :class:`Timer` with lazy cancellation (cancelled entries are skipped)."""

    def __init__(self) -> None:
        #: read by the machine's fast path (empty: nothing to do); never rebound, only mutated
        self.heap: list[Timer] = []
        self._seq = 0
        self._busy = 0  #: pending busy timers

    def at(self, when_ns: int, callback: TimerCallback, *, now_ns: int, busy: bool = True, name: str = "") -> Timer:
        """Schedule ``callback`` at absolute virtual time ``when_ns`` (not before ``now_ns``)."""
        if type(when_ns) is not int:
            raise DeviceError(f"timer {name or callback!r}: time {when_ns!r} is not an integer of ns")
        if when_ns < now_ns:
            raise DeviceError(f"timer {name or callback!r}: {when_ns} ns is in the past (now {now_ns} ns)")
        self._seq += 1
        timer = Timer(when_ns, self._seq, callback, busy, name)
        heapq.heappush(self.heap, timer)
        if busy:
            self._busy += 1
        return timer

    def cancel(self, timer: Timer) -> bool:
        """Cancel ``timer``; False when it had already fired or been cancelled."""
        if not timer.pending:
            return False
        timer.cancelled = True
        if timer.busy:
            self._busy -= 1
        return True

    def _purge(self) -> None:
        heap = self.heap
        while heap and not heap[0].pending:
            heapq.heappop(heap)

    def next_ns(self) -> int | None:
        """Virtual time of the earliest pending timer, or None."""
        self._purge()
        return self.heap[0].when_ns if self.heap else None

    def next_busy_ns(self) -> int | None:
        """Virtual time of the earliest pending busy timer, or None."""
        if not self._busy:
            return None
        return min(t.when_ns for t in self.heap if t.pending and t.busy)

    @property
    def busy(self) -> bool:
        return self._busy > 0

    def pop_due(self, now_ns: int) -> Timer | None:
        """Remove and return the earliest pending timer due at or before ``now_ns``, marked fired."""
        self._purge()
        heap = self.heap
        if not heap or heap[0].when_ns > now_ns:
            return None
        timer = heapq.heappop(heap)
        timer.fired = True
        if timer.busy:
            self._busy -= 1
        return timer

    def pending(self) -> list[Timer]:
        """Pending timers in firing order (for dumps and tests)."""
        return sorted(t for t in self.heap if t.pending)

    def clear(self) -> None:
        """Drop every timer (machine reset): none of them fires."""
        for timer in self.heap:
            timer.cancelled = True
        self.heap.clear()
        self._busy = 0
