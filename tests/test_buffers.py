"""The DMA zone allocator (hil.buffers).

The placement rules come from DMA-ISA-LPC (docs/reference/linux-isa-dma.md §3, rules 4, 5, 11, 17): below
16 MiB, no 64 KiB (channels 0-3) or 128 KiB (channels 5-7) boundary crossed, 16-bit channels
even, channel 4 never. The waiting policy is the Xen balloon's "try harder" (§4): no remembered
hard limit, partial grants kept, timer retry with backoff 1 s doubling to a 32 s cap and reset on
success, synchronous callers all-or-nothing.

Time is virtual wherever a test depends on the retry timer, so the suite never sleeps for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from itertools import pairwise

import pytest
import structlog
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from hil.buffers import (
    Backoff,
    DmaBuffer,
    DmaZone,
    DoubleFreeError,
    ForeignBufferError,
    InvalidRequestError,
    ReservedBufferError,
    ZoneConfigError,
    ZoneExhaustedError,
    ZoneTooSmallError,
)
from hil.errors import (
    AlignmentError,
    AllocationError,
    AllocationTimeout,
    CascadeChannelError,
    HilError,
    InvalidChannelError,
    TransferLengthError,
)
from hil.ports import DMA_LIMIT
from hil.rules import check_buffer, rules_for

CHANNELS = [0, 1, 2, 3, 5, 6, 7]
KiB = 1024


class VirtualTime:
    """A clock and a sleep that jump instead of waiting, so backoff schedules run in microseconds."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay
        await asyncio.sleep(0)


def zone_with(vt: VirtualTime, start: int = 0, end: int = 0x30000, **kw: float) -> DmaZone:
    return DmaZone(start=start, end=end, sleep=vt.sleep, clock=vt.clock, **kw)


def check_zone(zone: DmaZone) -> None:
    """Free extents and allocated buffers must tile the window exactly: no overlap, no leak."""
    for b in zone.allocated:
        check_buffer(b.channel, b.phys, b.size)
        assert zone.start <= b.phys and b.end <= zone.end
    free = zone.free_extents
    assert free == sorted(free)
    for (_, e1), (s2, _) in pairwise(free):
        assert e1 < s2, "adjacent free extents must be coalesced"
    pieces = sorted([(s, e) for s, e in free] + [(b.phys, b.end) for b in zone.allocated])
    cursor = zone.start
    for s, e in pieces:
        assert s == cursor and e > s, f"gap or overlap at 0x{cursor:X}: {pieces}"
        cursor = e
    assert cursor == zone.end
    assert zone.free_bytes + sum(b.size for b in zone.allocated) == zone.size


async def settle(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


@pytest.fixture
def logs():
    """Captured structlog events at every level, whatever another test configured before."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with structlog.testing.capture_logs() as captured:
            yield captured
    finally:
        structlog.configure(**saved)


# --- the rules hold for every buffer (§3) ---------------------------------------------------


@pytest.mark.parametrize("channel", CHANNELS)
async def test_every_buffer_obeys_the_rules_near_boundaries(channel: int) -> None:
    """§3 rules 4, 5, 17: an awkward window (odd start just below a 64 KiB edge, straddling the
    128 KiB edges) and sizes up to the maximum still yield only rule-abiding buffers."""
    r = rules_for(channel)
    zone = DmaZone(start=0xFFF1, end=0x90000)
    sizes = [r.max_length, 2, r.max_length - 2, 0x100, 0x8000, 0xFFFE, 0x10, r.max_length // 2]
    if r.align == 1:
        sizes += [1, 3, 0xFFFF]
    got = []
    for size in sizes:
        with contextlib.suppress(ZoneExhaustedError):
            got.append(zone.alloc_nowait(size, channel))
    got.append(await zone.alloc(2, channel=channel, timeout=0))
    assert len(got) >= 4
    for b in got:
        assert b.channel == channel and b.end == b.phys + b.size
        check_buffer(channel, b.phys, b.size)
        assert not r.crosses(b.phys, b.size)
        assert b.end <= DMA_LIMIT
    check_zone(zone)


async def test_window_just_below_a_64k_edge_gives_a_full_64k_buffer_at_the_edge() -> None:
    """§3 rule 5: a free extent may be usable only from the next boundary; the bytes below it
    stay free for small buffers."""
    zone = DmaZone(start=0xFFF0, end=0x20000)
    big = await zone.alloc(0x10000, channel=1)
    assert (big.phys, big.size, big.end) == (0x10000, 0x10000, 0x20000)
    assert zone.free_extents == [(0xFFF0, 0x10000)]
    small = await zone.alloc(0x10, channel=3)
    assert small.phys == 0xFFF0
    with pytest.raises(AllocationTimeout):
        await zone.alloc(1, channel=0, timeout=0)
    check_zone(zone)


async def test_16bit_channels_use_128k_edges_and_even_addresses() -> None:
    """§3 rules 5 and 17: channel 5-7 buffers may cross a 64 KiB edge but not a 128 KiB one, and
    an odd window start is rounded up for them but not for 8-bit channels."""
    zone = DmaZone(start=0x10001, end=0x60000)
    word = zone.alloc_nowait(2, channel=6)
    assert word.phys == 0x10002
    byte = zone.alloc_nowait(1, channel=0)
    assert byte.phys == 0x10001
    spanning = zone.alloc_nowait(0x18000, channel=5)
    assert spanning.phys == 0x20000  # from 0x10004 it would cross the 128 KiB edge at 0x20000
    assert rules_for(1).crosses(spanning.phys, spanning.size)  # 64 KiB edge 0x30000: fine on ch5
    full = zone.alloc_nowait(0x20000, channel=5)
    assert full.phys == 0x40000  # 0x38000 would cross the 128 KiB edge at 0x40000
    check_zone(zone)


async def test_top_of_the_isa_window() -> None:
    """§3 rule 4: a zone may end exactly at 16 MiB, and the last 128 KiB page is usable."""
    zone = DmaZone(start=0xFE0000, end=DMA_LIMIT)
    b = await zone.alloc(0x20000, channel=7)
    assert (b.phys, b.end) == (0xFE0000, DMA_LIMIT)
    check_buffer(7, b.phys, b.size)


async def test_first_fit_and_coalescing_on_free() -> None:
    """Placement is lowest-address first fit over a sorted free list; frees coalesce so that
    the window is whole again once everything is returned."""
    zone = DmaZone(start=0, end=0x40000)
    a, b, c = (zone.alloc_nowait(0x4000, 2) for _ in range(3))
    assert [a.phys, b.phys, c.phys] == [0, 0x4000, 0x8000]
    zone.free(b)
    assert zone.free_extents == [(0x4000, 0x8000), (0xC000, 0x40000)]
    d = zone.alloc_nowait(0x1000, 2)
    assert d.phys == 0x4000  # the lowest hole, not the big tail
    for x in (a, c, d):
        zone.free(x)
    assert zone.free_extents == [(0, 0x40000)]
    assert zone.allocated == [] and zone.free_bytes == 0x40000
    check_zone(zone)


def test_largest_free_is_per_channel() -> None:
    """§3 rule 5: the same free extent offers different maxima to 8- and 16-bit channels."""
    zone = DmaZone(start=0x8000, end=0x28000)
    assert zone.largest_free(1) == 0x10000
    assert zone.largest_free(5) == 0x18000
    zone.alloc_nowait(0x10000, 1)  # takes 0x10000..0x20000
    assert zone.largest_free(0) == 0x8000
    assert zone.largest_free(6) == 0x8000
    zone2 = DmaZone(start=0x1001, end=0x1004)
    assert zone2.largest_free(0) == 3 and zone2.largest_free(5) == 2
    with pytest.raises(CascadeChannelError):
        zone.largest_free(4)


# --- impossible requests fail at once ------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "channel", "error"),
    [
        (0, 1, TransferLengthError),
        (0x10001, 1, TransferLengthError),
        (0x20002, 5, TransferLengthError),
        (-2, 6, TransferLengthError),
        (3, 5, AlignmentError),
        (0x1FFFF, 7, AlignmentError),
        (16, 4, CascadeChannelError),
        (16, 8, InvalidChannelError),
        (16, -1, InvalidChannelError),
        ("16", 1, TransferLengthError),
    ],
)
async def test_impossible_requests_raise_the_rule_error_without_waiting(size, channel, error) -> None:
    """§3: a request that breaks a rule can never succeed, so it must not join the queue,
    even on a full zone with no timeout."""
    zone = DmaZone(start=0, end=0x1000)
    hog = zone.alloc_nowait(0x1000, 0)
    async with asyncio.timeout(1):
        with pytest.raises(error):
            await zone.alloc(size, channel=channel)
        with pytest.raises(error):
            await zone.alloc_many([2, size], channel=channel)
    with pytest.raises(error):
        zone.alloc_nowait(size, channel)
    assert zone.waiting == 0 and zone.allocated == [hog]


async def test_requests_that_never_fit_the_window_fail_at_once() -> None:
    """Geometry, not history: a window without an aligned 128 KiB page can never hold a full
    channel-5 buffer, so waiting for it would be forever (unlike pressure, §4)."""
    zone = DmaZone(start=0x10000, end=0x3FFFE)
    async with asyncio.timeout(1):
        with pytest.raises(ZoneTooSmallError, match="entirely free"):
            await zone.alloc(0x20000, channel=5)
        with pytest.raises(ZoneTooSmallError):
            await zone.alloc_many([0x10000, 0x10000, 0x10000], channel=1)
    assert (await zone.alloc(0x10000, channel=1)).phys == 0x10000
    assert await zone.alloc_many([], channel=2) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(start=0x1000, end=0x1000),
        dict(start=0x2000, end=0x1000),
        dict(start=0, end=DMA_LIMIT + 1),
        dict(start=-1, end=0x1000),
        dict(start=0.5, end=0x1000),
        dict(start=0, end=0x1000, backoff_initial=0),
        dict(start=0, end=0x1000, backoff_factor=0.5),
        dict(start=0, end=0x1000, backoff_initial=4.0, backoff_max=2.0),
        dict(start=0, end=0x1000, backoff_max=float("inf")),
    ],
)
def test_zone_config_is_validated(kwargs) -> None:
    """§3 rule 4: nothing above 16 MiB is reachable, so such a window is refused up front."""
    with pytest.raises(ZoneConfigError) as info:
        DmaZone(**kwargs)
    assert isinstance(info.value, AllocationError) and isinstance(info.value, HilError)
    assert str(info.value)


@pytest.mark.parametrize("timeout", [-1, float("nan"), "1", True])
async def test_bad_timeouts_are_refused(timeout) -> None:
    zone = DmaZone(start=0, end=0x1000)
    with pytest.raises(InvalidRequestError):
        await zone.alloc(16, channel=1, timeout=timeout)


async def test_a_bare_size_is_not_a_set_of_sizes() -> None:
    zone = DmaZone(start=0, end=0x1000)
    with pytest.raises(InvalidRequestError):
        await zone.alloc_many(16, channel=1)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError):
        zone.alloc_many_nowait(16, channel=1)  # type: ignore[arg-type]


# --- free ----------------------------------------------------------------------------------


async def test_double_and_foreign_frees_are_refused() -> None:
    zone = DmaZone(start=0, end=0x10000)
    other = DmaZone(start=0, end=0x10000)
    b = await zone.alloc(0x100, channel=1)
    theirs = await other.alloc(0x100, channel=1)
    zone.free(b)
    with pytest.raises(DoubleFreeError, match="double free"):
        zone.free(b)
    again = await zone.alloc(0x100, channel=1)  # same address, new grant
    assert again.phys == b.phys and again != b
    with pytest.raises(DoubleFreeError):
        zone.free(b)  # the stale handle must not free the new owner's buffer
    with pytest.raises(ForeignBufferError):
        zone.free(theirs)
    with pytest.raises(ForeignBufferError):
        zone.free(DmaBuffer(phys=again.phys, size=again.size, channel=1))
    with pytest.raises(ForeignBufferError):
        zone.free("0x1000")  # type: ignore[arg-type]
    assert zone.allocated == [again]
    for cls in (DoubleFreeError, ForeignBufferError):
        assert issubclass(cls, AllocationError) and issubclass(cls, HilError)
    check_zone(zone)


# --- waiting: woken by free, FIFO, timer retry with backoff (§4) ----------------------------


async def test_free_wakes_a_waiter_at_once() -> None:
    """§4.4: a release kicks the waiter immediately; the timer is not what serves it (its first
    retry is 1000 s away)."""
    zone = DmaZone(start=0, end=0x10000, backoff_initial=1000, backoff_max=1000)
    hog = await zone.alloc(0x10000, channel=1)
    task = asyncio.create_task(zone.alloc(0x8000, channel=1))
    await settle()
    assert zone.waiting == 1 and not task.done()
    zone.free(hog)
    # handed over synchronously inside free(): nobody can take it in between
    assert zone.waiting == 0 and [b.size for b in zone.allocated] == [0x8000]
    async with asyncio.timeout(1):
        b = await task
    assert b.phys == 0 and zone.allocated == [b]


async def test_waiters_are_served_fifo_so_a_large_early_request_is_not_starved() -> None:
    """Fairness policy: strict FIFO. Memory that would satisfy a later small request is kept for
    the earlier large one, and new arrivals, even synchronous ones, queue behind it."""
    zone = DmaZone(start=0, end=0x10000, backoff_initial=1000, backoff_max=1000)
    pieces = [zone.alloc_nowait(0x1000, 1) for _ in range(16)]
    big = asyncio.create_task(zone.alloc(0x10000, channel=1))
    await settle()
    small = asyncio.create_task(zone.alloc(0x100, channel=1))
    await settle()
    zone.free(pieces[0])  # enough for the small one, not for the big one
    await settle()
    assert not big.done() and not small.done() and zone.free_bytes == 0x1000
    with pytest.raises(ZoneExhaustedError, match="FIFO"):
        zone.alloc_nowait(0x10, 1)
    for p in pieces[1:]:
        zone.free(p)
    await settle()
    assert big.done() and not small.done()
    zone.free(await big)
    async with asyncio.timeout(1):
        assert (await small).size == 0x100
    check_zone(zone)


async def test_a_head_that_gives_up_lets_the_next_waiter_in() -> None:
    zone = DmaZone(start=0, end=0x10000, backoff_initial=1000, backoff_max=1000)
    zone.alloc_nowait(0x8000, 2)
    big = asyncio.create_task(zone.alloc(0x10000, channel=2, timeout=0.05))
    await settle()
    small = asyncio.create_task(zone.alloc(0x1000, channel=2))
    await settle()
    assert not small.done() and zone.waiting == 2  # FIFO: the free 32 KiB waits for the head
    async with asyncio.timeout(1):
        with pytest.raises(AllocationTimeout):
            await big
        assert (await small).phys == 0x8000


def test_backoff_doubles_to_the_cap_and_resets() -> None:
    """§4.3: 1, 2, 4, ... 32, 32 s; a success starts again at 1 s."""
    b = Backoff()
    assert [b.next() for _ in range(8)] == [1, 2, 4, 8, 16, 32, 32, 32]
    b.reset()
    assert [b.next() for _ in range(3)] == [1, 2, 4]
    c = Backoff(initial=0.5, factor=3, maximum=10)
    assert [c.next() for _ in range(5)] == [0.5, 1.5, 4.5, 10, 10]


async def test_timer_retries_follow_the_backoff_schedule_until_the_timeout() -> None:
    """§4.2/§4.3: under pressure the request retries on a timer (1 s doubling to 32 s) and gives
    up only at its own timeout; the last wait is cut to the deadline."""
    vt = VirtualTime()
    zone = zone_with(vt, end=0x1000)
    zone.alloc_nowait(0x1000, 0)
    with pytest.raises(AllocationTimeout):
        await zone.alloc(0x10, channel=0, timeout=100)
    assert vt.sleeps == [1, 2, 4, 8, 16, 32, 32, 5]
    assert vt.now == 100
    assert zone.waiting == 0


async def test_retry_delays_are_logged(logs) -> None:
    vt = VirtualTime()
    zone = zone_with(vt, end=0x1000, backoff_initial=0.25, backoff_max=1)
    zone.alloc_nowait(0x1000, 0)
    with pytest.raises(AllocationTimeout):
        await zone.alloc(0x10, channel=3, timeout=3)
    events = [e["event"] for e in logs]
    assert events[0] == "dma_alloc_wait" and events[-1] == "dma_alloc_timeout"
    retries = [e for e in logs if e["event"] == "dma_alloc_retry"]
    assert [e["delay"] for e in retries] == [0.25, 0.5, 1, 1, 0.25]
    assert [e["attempt"] for e in retries] == [1, 2, 3, 4, 5]
    assert all(e["channel"] == 3 and e["sizes"] == [0x10] for e in retries)
    timeout = logs[-1]
    assert timeout["log_level"] == "warning" and timeout["free_bytes"] == 0 and timeout["retries"] == 5


async def test_backoff_restarts_after_progress() -> None:
    """§4.3: a partial grant is a success (BP_DONE), so the delays start over at 1 s."""
    vt = VirtualTime()

    async def sleep(delay: float) -> None:
        await vt.sleep(delay)
        if len(vt.sleeps) == 3:
            zone.free(a)  # progress for the waiting set, during its third backoff wait

    zone = DmaZone(start=0, end=0x20000, sleep=sleep, clock=vt.clock)
    a, b = zone.alloc_nowait(0x10000, 1), zone.alloc_nowait(0x10000, 1)
    with pytest.raises(AllocationTimeout) as info:
        await zone.alloc_many([0x10000, 0x10000], channel=1, timeout=1 + 2 + 4 + 1 + 2 + 4 + 8)
    assert vt.sleeps == [1, 2, 4, 1, 2, 4, 8]
    assert info.value.obtained == 1
    zone.free(b)
    assert zone.allocated == [] and zone.free_bytes == zone.size


async def test_a_later_wait_starts_the_backoff_from_the_beginning() -> None:
    """§4.1/§4.2: nothing is remembered from an earlier shortfall, neither a limit nor a delay."""
    vt = VirtualTime()
    zone = zone_with(vt, end=0x1000)
    hog = zone.alloc_nowait(0x1000, 0)
    with pytest.raises(AllocationTimeout):
        await zone.alloc(0x1000, channel=0, timeout=10)
    vt.sleeps.clear()
    with pytest.raises(AllocationTimeout):
        await zone.alloc(0x1000, channel=0, timeout=2)
    assert vt.sleeps == [1, 1]
    zone.free(hog)
    assert (await zone.alloc(0x1000, channel=0, timeout=0)).size == 0x1000  # no hard limit learned


async def test_timeout_zero_tries_once_without_sleeping() -> None:
    vt = VirtualTime()
    zone = zone_with(vt, end=0x1000)
    zone.alloc_nowait(0x800, 0)
    assert (await zone.alloc(0x800, channel=0, timeout=0)).phys == 0x800
    with pytest.raises(AllocationTimeout):
        await zone.alloc(1, channel=0, timeout=0)
    assert vt.sleeps == []


async def test_timeout_message_says_what_was_wanted_and_what_was_free() -> None:
    """A bench user must be able to act on the message alone: the request, its rules, and what
    the zone had (total free, largest usable extent for that channel)."""
    vt = VirtualTime()
    zone = zone_with(vt, start=0, end=0x20000)
    zone.alloc_nowait(0x4000, 1)  # 0x0000
    zone.alloc_nowait(0x10000, 1)  # 0x10000: leaves 0x4000..0x10000 free (48 KiB)
    with pytest.raises(AllocationTimeout) as info:
        await zone.alloc(0x10000, channel=1, timeout=3)
    msg = str(info.value)
    for part in ("3 s", "65536 bytes", "channel 1", "8-bit", "64 KiB", "16 MiB",
                 f"free: {0xC000} bytes", f"largest usable for channel 1: {0xC000} bytes"):
        assert part in msg, (part, msg)
    e = info.value
    assert (e.sizes, e.channel, e.free_bytes, e.largest_free, e.timeout) == ((0x10000,), 1, 0xC000, 0xC000, 3)
    with pytest.raises(AllocationTimeout) as info16:
        await zone.alloc(0x10000, channel=6, timeout=1)
    assert "128 KiB" in str(info16.value) and "even address" in str(info16.value)


# --- cancellation ---------------------------------------------------------------------------


async def test_cancelling_a_waiter_leaves_the_zone_consistent() -> None:
    zone = DmaZone(start=0, end=0x10000)
    hog = zone.alloc_nowait(0xC000, 1)
    task = asyncio.create_task(zone.alloc(0x8000, channel=1))
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert zone.waiting == 0 and zone.allocated == [hog]
    zone.free(hog)
    assert zone.free_bytes == zone.size and zone.allocated == []
    check_zone(zone)


async def test_cancelled_after_the_grant_but_before_delivery_releases_it() -> None:
    """free() hands memory to the waiter synchronously; if the waiter is cancelled before it
    resumes, the buffer it never received must go back."""
    zone = DmaZone(start=0, end=0x10000)
    hog = zone.alloc_nowait(0x10000, 1)
    task = asyncio.create_task(zone.alloc(0x10000, channel=1))
    await settle()
    zone.free(hog)
    assert len(zone.allocated) == 1  # granted...
    task.cancel()  # ...but never delivered
    with pytest.raises(asyncio.CancelledError):
        await task
    assert zone.allocated == [] and zone.free_bytes == zone.size


async def test_an_outer_asyncio_timeout_cancels_cleanly() -> None:
    zone = DmaZone(start=0, end=0x10000)
    hog = zone.alloc_nowait(0x10000, 1)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await zone.alloc_many([0x100, 0x100], channel=1)
    assert zone.allocated == [hog] and zone.waiting == 0


# --- alloc_many: partial progress, released on failure (§4.2, §4.3) ------------------------


async def test_alloc_many_keeps_partial_grants_while_waiting() -> None:
    """§4.2: fewer granted than asked are kept, not handed back, while the rest is awaited."""
    zone = DmaZone(start=0, end=0x30000, backoff_initial=1000, backoff_max=1000)
    hogs = [zone.alloc_nowait(0x10000, 1) for _ in range(3)]
    task = asyncio.create_task(zone.alloc_many([0x10000, 0x8000], channel=1))
    await settle()
    zone.free(hogs[0])
    await settle()
    assert not task.done()
    held = [b for b in zone.allocated if b not in hogs]
    assert len(held) == 1 and held[0].size == 0x10000 and zone.free_bytes == 0  # kept, not handed back
    with pytest.raises(ReservedBufferError):
        zone.free(held[0])  # not handed out yet
    zone.free(hogs[1])
    async with asyncio.timeout(1):
        bufs = await task
    assert [b.size for b in bufs] == [0x10000, 0x8000]  # in request order
    assert bufs[0] == held[0]
    for b in bufs:
        zone.free(b)
    check_zone(zone)


async def test_alloc_many_releases_what_it_had_on_timeout() -> None:
    vt = VirtualTime()
    zone = zone_with(vt, end=0x30000)
    a = zone.alloc_nowait(0x10000, 1)
    zone.alloc_nowait(0x10000, 1)
    zone.alloc_nowait(0x10000, 1)
    zone.free(a)
    free_before = zone.free_bytes
    with pytest.raises(AllocationTimeout) as info:
        await zone.alloc_many([0x10000, 0x10000, 0x4000], channel=1, timeout=4)
    assert "had obtained 1 of 3 (released)" in str(info.value)
    assert info.value.obtained == 1
    assert zone.free_bytes == free_before and zone.waiting == 0
    check_zone(zone)


async def test_alloc_many_repacks_its_own_partial_grants_when_that_completes_it() -> None:
    """Partial grants placed while memory was fragmented could strand the rest forever even in
    an empty zone; they are not yet the caller's, so the request re-places them."""
    zone = DmaZone(start=0, end=0x20000, backoff_initial=1000, backoff_max=1000)
    low = zone.alloc_nowait(0x4000, 1)  # 0x0000..0x4000
    high = zone.alloc_nowait(0x10000, 1)  # 0x10000..0x20000 (first fit skips the 48 KiB hole)
    assert high.phys == 0x10000
    task = asyncio.create_task(zone.alloc_many([0x8000, 0x10000, 0x8000], channel=1))
    await settle()
    assert [b.phys for b in zone.allocated] == [0, 0x4000, 0x10000]  # kept one at an awkward spot
    zone.free(low)
    zone.free(high)
    async with asyncio.timeout(1):
        bufs = await task
    assert sorted((b.phys, b.size) for b in bufs) == [(0, 0x8000), (0x8000, 0x8000), (0x10000, 0x10000)]
    check_zone(zone)


async def test_nowait_requests_are_all_or_nothing() -> None:
    """§4.3 alloc_xenballooned_pages: a synchronous caller keeps nothing from a shortfall."""
    zone = DmaZone(start=0, end=0x20000)
    zone.alloc_nowait(0x8000, 2)
    before = zone.free_extents
    with pytest.raises(ZoneExhaustedError, match="not enough"):
        zone.alloc_many_nowait([0x10000, 0x10000], 2)
    assert zone.free_extents == before
    bufs = zone.alloc_many_nowait([0x8000, 0x10000], 2)
    assert [(b.phys, b.size) for b in bufs] == [(0x8000, 0x8000), (0x10000, 0x10000)]
    check_zone(zone)


# --- properties -----------------------------------------------------------------------------


def reference_first_fit(zone: DmaZone, held: list[DmaBuffer], size: int, channel: int) -> int | None:
    """An independent model: scan the gaps between held buffers and try the aligned gap start and
    every boundary inside the gap, the only places where a lowest valid address can be."""
    r = rules_for(channel)
    cursor, gaps = zone.start, []
    for b in sorted(held, key=lambda b: b.phys):
        if b.phys > cursor:
            gaps.append((cursor, b.phys))
        cursor = b.end
    if cursor < zone.end:
        gaps.append((cursor, zone.end))
    for s, e in gaps:
        candidates = [s + (s % 2 if r.align == 2 else 0)]
        edge = (s // r.boundary + 1) * r.boundary
        while edge < e:
            candidates.append(edge)
            edge += r.boundary
        for p in candidates:
            if p + size <= e and p % r.align == 0 and not r.crosses(p, size):
                return p
    return None


def sizes_for(channel: int) -> st.SearchStrategy[int]:
    """Valid lengths for the channel, biased to tiny ones and to the maximum."""
    r = rules_for(channel)
    top = r.max_length // r.align
    units = st.one_of(st.integers(1, 0x40), st.integers(1, top), st.just(top))
    return units.map(lambda n: n * r.align)


one_request = st.sampled_from(CHANNELS).flatmap(lambda ch: st.tuples(st.just(ch), sizes_for(ch)))
set_request = st.sampled_from(CHANNELS).flatmap(
    lambda ch: st.tuples(st.just(ch), st.lists(sizes_for(ch), min_size=1, max_size=3))
)


class ZoneMachine(RuleBasedStateMachine):
    """Synchronous allocate/free in any order: placement is exactly first fit (checked against an
    independent model), and the window is always tiled by free and allocated extents."""

    def __init__(self) -> None:
        super().__init__()
        self.zone = DmaZone(start=0xFFF1, end=0x70000)
        self.held: list[DmaBuffer] = []
        self.freed: list[DmaBuffer] = []

    @rule(req=one_request)
    def alloc(self, req) -> None:
        channel, size = req
        want = reference_first_fit(self.zone, self.held, size, channel)
        assert (want is not None) == (self.zone.largest_free(channel) >= size)
        try:
            b = self.zone.alloc_nowait(size, channel)
        except ZoneExhaustedError:
            assert want is None
            assert self.zone.largest_free(channel) < size
        except ZoneTooSmallError:
            assert want is None
        else:
            assert b.phys == want and b.size == size and b.channel == channel
            self.held.append(b)

    @rule(req=set_request)
    def alloc_many(self, req) -> None:
        channel, sizes = req
        before = self.zone.free_extents
        try:
            bufs = self.zone.alloc_many_nowait(sizes, channel)
        except (ZoneExhaustedError, ZoneTooSmallError):
            assert self.zone.free_extents == before
        else:
            assert [b.size for b in bufs] == sizes
            self.held.extend(bufs)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def free(self, data) -> None:
        b = data.draw(st.sampled_from(self.held))
        self.zone.free(b)
        self.held.remove(b)
        self.freed.append(b)

    @precondition(lambda self: self.freed)
    @rule(data=st.data())
    def double_free(self, data) -> None:
        b = data.draw(st.sampled_from(self.freed))
        try:
            self.zone.free(b)
        except DoubleFreeError:
            pass
        else:
            raise AssertionError("double free accepted")

    @invariant()
    def tiled(self) -> None:
        check_zone(self.zone)
        assert sorted(self.zone.allocated, key=lambda b: b.phys) == sorted(self.held, key=lambda b: b.phys)


TestZoneMachine = ZoneMachine.TestCase
TestZoneMachine.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)


job = st.tuples(
    st.sampled_from(CHANNELS),
    st.lists(st.one_of(st.integers(1, 0x20000), st.integers(0x8000, 0x20000)), min_size=1, max_size=3),
    st.integers(0, 20),  # how many loop turns the task holds its buffers
    st.sampled_from([None, None, None, 0, 0.002]),  # timeout
    st.booleans(),  # cancel it from outside after a few turns
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    start=st.sampled_from([0, 0xFFF0, 0x1FFF1, 0xFE0000 - 0x40000]),
    length=st.integers(0x28000, 0x48000),
    jobs=st.lists(job, min_size=4, max_size=24),
    seed=st.integers(0, 2**16),
)
def test_concurrent_tasks_never_deadlock_or_double_allocate(start, length, jobs, seed) -> None:
    """§4 under load: many tasks allocate (one buffer or a set, keeping partial grants), hold,
    free, time out or get cancelled on random channels. Each holds one grant at a time, so once
    all frees happen every task must finish (bounded wall time), and at every step the live
    buffers must be disjoint, rule-abiding and accounted for exactly."""
    rng = random.Random(seed)

    async def scenario() -> None:
        zone = DmaZone(start=start, end=min(start + length, DMA_LIMIT),
                       backoff_initial=0.001, backoff_factor=2, backoff_max=0.004)
        held: set[DmaBuffer] = set()

        async def worker(channel, sizes, hold, timeout) -> str:
            r = rules_for(channel)
            sizes = [min(s, r.max_length) for s in sizes]
            sizes = [s - s % r.align or r.align for s in sizes]
            try:
                if len(sizes) == 1:
                    bufs = [await zone.alloc(sizes[0], channel=channel, timeout=timeout)]
                else:
                    bufs = await zone.alloc_many(sizes, channel=channel, timeout=timeout)
            except ZoneTooSmallError:
                return "never fits"
            except AllocationTimeout:
                return "timeout"
            assert [b.size for b in bufs] == sizes
            for b in bufs:
                assert not any(b.overlaps(o) for o in held), "double allocation"
                held.add(b)
            check_zone(zone)
            try:
                for _ in range(hold):
                    await asyncio.sleep(0)
            finally:
                for b in bufs:
                    held.discard(b)
                    zone.free(b)
                check_zone(zone)
            return "ok"

        tasks = [asyncio.create_task(worker(ch, sizes, hold, t)) for ch, sizes, hold, t, _ in jobs]
        async with asyncio.timeout(5):
            for (*_, cancel), task in zip(jobs, tasks):
                if cancel:
                    for _ in range(rng.randint(0, 4)):
                        await asyncio.sleep(0)
                    task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        for res in results:
            assert res in ("ok", "timeout", "never fits") or isinstance(res, asyncio.CancelledError), res
        assert zone.waiting == 0 and zone.allocated == [] and held == set()
        assert zone.free_extents == [(zone.start, zone.end)]

    asyncio.run(scenario())
