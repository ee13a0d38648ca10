"""The machine's virtual-time scheduler (hil/sim/timers.py): order, ties, cancellation, and how
timers interleave with DMA service in advance() and run_until_idle()."""

from __future__ import annotations

import pytest

from hil.errors import DeviceError, SettleTimeout
from hil.sim.devices import Source
from hil.sim.machine import Machine, machine_for
from hil.sim.timers import Scheduler

UNIT_NS = (2 + 4) * 250  # one single-mode transfer: acquire + S1-S4 at 4 MHz (Timing defaults)


def program_ch1(m: Machine, count: int, mode: int = 0x45) -> None:
    """Channel 1, write transfer (device -> memory) to 0x10000, ``count`` bytes, unmasked."""
    for port, value in ((0x0A, 0x05), (0x0B, mode), (0x0C, 0), (0x02, 0), (0x02, 0),
                        (0x83, 0x01), (0x03, (count - 1) & 0xFF), (0x03, (count - 1) >> 8), (0x0A, 0x01)):
        m.io_write(port, value)


def test_timers_fire_in_time_order_and_ties_in_scheduling_order():
    m = Machine()
    fired: list[str] = []
    now = m.now_ns
    for name, when in (("c", 300), ("a", 100), ("b1", 200), ("b2", 200), ("b3", 200)):
        m.timers.at(now + when, lambda t, name=name: fired.append(name), now_ns=now)
    m.advance(250)
    assert fired == ["a", "b1", "b2", "b3"]
    m.advance(50)  # due exactly at the end of the advance: fires
    assert fired[-1] == "c"


def test_callback_sees_its_time_and_may_schedule_at_the_same_time():
    m = Machine()
    seen: list[tuple[str, int, int]] = []

    def first(t: int) -> None:
        seen.append(("first", t, m.now_ns))
        m.timers.at(t, lambda t2: seen.append(("chained", t2, m.now_ns)), now_ns=m.now_ns)

    start = m.now_ns
    m.timers.at(start + 500, first, now_ns=start)
    m.timers.at(start + 500, lambda t: seen.append(("second", t, m.now_ns)), now_ns=start)
    m.advance(1000)
    assert seen == [("first", start + 500, start + 500), ("second", start + 500, start + 500),
                    ("chained", start + 500, start + 500)]
    assert m.now_ns == start + 1000


def test_cancel_and_refusals():
    s = Scheduler()
    t = s.at(10, lambda _t: None, now_ns=0)
    assert s.busy and s.next_ns() == 10
    assert s.cancel(t) and not s.cancel(t)
    assert s.next_ns() is None and not s.busy
    with pytest.raises(DeviceError, match="in the past"):
        s.at(5, lambda _t: None, now_ns=6, name="late")
    with pytest.raises(DeviceError, match="integer"):
        s.at(1.5, lambda _t: None, now_ns=0)  # type: ignore[arg-type]  # the check under test


def test_no_timer_means_advance_as_before():
    """With nothing scheduled the clock moves exactly as it always did."""
    m = Machine()
    start = m.now_ns
    m.advance(12345)
    assert m.now_ns == start + 12345 and m.next_event_ns() is None and m.idle


def test_timer_interleaves_with_a_single_mode_run():
    """A timer due mid-run sees the transfer exactly as far as the clock got (the merged slice
    stops at the timer)."""
    m = Machine()
    m.attach(1, Source(bytes(1000)))
    program_ch1(m, 1000)
    counts: list[int] = []
    m.timers.at(m.now_ns + 10 * UNIT_NS, lambda t: counts.append(m.channel(1).cur_count), now_ns=m.now_ns)
    m.run_until_idle()
    assert counts == [999 - 10]


def test_block_burst_holds_the_bus_over_a_timer():
    """docs/reference/8237.md §3.5: a block transfer runs to TC once started; a timer due inside
    it fires when the burst ends, with its own scheduled time passed in."""
    m = Machine()
    m.attach(1, Source(bytes(100)))
    seen: list[tuple[int, int, int]] = []
    program_ch1(m, 100, mode=0x85)  # block, write, ch1; the burst starts with the next advance
    due = m.now_ns + 5 * UNIT_NS
    m.timers.at(due, lambda t: seen.append((t, m.now_ns, m.channel(1).cur_count)), now_ns=m.now_ns)
    m.run_until_idle()
    (when, now, count), = seen
    assert when == due and now > due and count == 0xFFFF


def test_run_until_idle_waits_for_busy_timers_only():
    m = Machine()
    fired: list[str] = []
    start = m.now_ns
    m.timers.at(start + 2_000_000, lambda t: fired.append("busy"), now_ns=start)
    m.timers.at(start + 1_000_000, lambda t: fired.append("background"), now_ns=start, busy=False)
    m.timers.at(start + 9_000_000, lambda t: fired.append("late background"), now_ns=start, busy=False)
    assert not m.idle and m.next_event_ns() == 1_000_000
    took = m.run_until_idle()
    assert fired == ["background", "busy"] and took == 2_000_000
    assert m.run_until_idle() == 0  # only a background timer left: settled
    assert not m.idle  # but something can still change by itself


def test_busy_timer_beyond_the_limit_is_a_settle_timeout():
    m = Machine()
    m.timers.at(m.now_ns + 5_000_000, lambda t: None, now_ns=m.now_ns, name="seek")
    with pytest.raises(SettleTimeout, match=r"seek.*beyond"):
        m.run_until_idle(limit_ns=1_000_000)


def test_self_rescheduling_timer_does_not_settle():
    """A device that keeps scheduling busy work (an autoinit sample clock) is activity past the limit."""
    m = Machine()

    def tick(t: int) -> None:
        m.timers.at(t + 100_000, tick, now_ns=m.now_ns, name="clock")

    m.timers.at(m.now_ns, tick, now_ns=m.now_ns, name="clock")
    with pytest.raises(SettleTimeout, match="clock"):
        m.run_until_idle(limit_ns=1_000_000)
    assert m.now_ns <= 1_000_000 + 100_000


@pytest.mark.parametrize("profile", ["intel", "qemu"])
def test_reset_drops_every_timer(profile):
    m = machine_for(profile)
    fired: list[int] = []
    m.timers.at(m.now_ns + 10, fired.append, now_ns=m.now_ns)
    m.reset()
    m.advance(1000)
    assert fired == [] and m.timers.next_ns() is None


def test_wait_irq_jumps_to_the_timer_that_raises_the_line():
    m = Machine()
    line = m.irq_line(6)
    start = m.now_ns
    m.timers.at(start + 3_000_000, lambda t: line.raise_(), now_ns=start)
    assert m.wait_irq(6, timeout_ns=10_000_000)
    assert m.now_ns == start + 3_000_000
    assert not m.wait_irq(6, level=False, timeout_ns=1_000)
    assert m.now_ns == start + 3_001_000


def test_wait_irq_times_out_in_virtual_time():
    m = Machine()
    start = m.now_ns
    assert not m.wait_irq(5, timeout_ns=2_500_000)
    assert m.now_ns == start + 2_500_000
