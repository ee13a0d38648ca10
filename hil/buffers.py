"""A DMA zone: the scarce ISA-DMA-able memory, handed out by the rules and with patience.

Why this exists. DMA-ISA-LPC (docs/reference/linux-isa-dma.md §3, rules 4-8) says the memory an ISA DMA
channel can reach is the low 16 MiB, that a buffer must not cross a 64 KiB (channels 0-3) or
128 KiB (channels 5-7) boundary, that 16-bit channels need an even address and length, and that
this memory is scarce, so an allocator should "try a bit harder" instead of failing at once.
:class:`DmaZone` owns one physical window (the simulator's low 16 MiB, or a window reserved on a
real target) and gives out :class:`DmaBuffer` extents that :func:`hil.rules.check_buffer`
accepts by construction: the placement and the driver layer ask the same module, so they can
never disagree.

How it tries harder: the policy of the Xen balloon driver after "try harder to balloon up under
memory pressure" (docs/reference/linux-isa-dma.md §4). A shortfall is transient pressure, never a ceiling: no
"hard limit" is remembered from a failure (the only immediate refusals are requests that break a
rule or that could not fit even in the empty zone, which is geometry, not history). A waiting
request is retried at once whenever memory is freed, and also on a timer with exponential
backoff (1 s doubling to a 32 s cap, reset whenever the request makes progress, §4.3), until its
own ``timeout``. A request for several buffers keeps the ones it got while it waits for the rest
(partial grants are kept, §4.2); the synchronous ``*_nowait`` calls are all-or-nothing, like
``alloc_xenballooned_pages``.

Fairness policy: strict FIFO. Requests are served in arrival order and a request never overtakes
an earlier one that is still waiting, even when memory for the later, smaller request is free.
Only the request at the head of the queue takes memory, so a large early request cannot be
starved by a stream of small later ones, and at most one waiting request holds a partial grant,
so waiting requests can never hold memory each other need. The price is head-of-line blocking,
and one caveat follows from it: a task that holds a buffer and then waits for another one can
deadlock with an earlier waiter that needs the first buffer. Ask for a set of buffers with one
:meth:`DmaZone.alloc_many` (one queue entry), allocate early and keep the buffers (§3 rule 8),
or pass a ``timeout``.

Everything runs on the event loop; there are no threads and no locks, because every change to
the zone happens in synchronous code between two awaits.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import field
from typing import Any

from hil.errors import (  # the zone's errors were defined here; their names stay importable from here
    AllocationTimeout,
    DoubleFreeError,
    ForeignBufferError,
    InvalidRequestError,
    ReservedBufferError,
    ZoneConfigError,
    ZoneExhaustedError,
    ZoneTooSmallError,
)
from hil.log import get_logger
from hil.ports import DMA_LIMIT
from hil.records import dataclass
from hil.rules import ChannelRules, check_buffer, rules_for

__all__ = [
    "Backoff",
    "DmaBuffer",
    "DmaZone",
    "DoubleFreeError",
    "ForeignBufferError",
    "InvalidRequestError",
    "ReservedBufferError",
    "ZoneConfigError",
    "ZoneExhaustedError",
    "ZoneTooSmallError",
]

log = get_logger("hil.buffers")

Extent = tuple[int, int]  #: a half-open physical range [start, end)
SleepFn = Callable[[float], Awaitable[object]]


# --- errors ---------------------------------------------------------------------------------


# --- values ---------------------------------------------------------------------------------

_zone_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class DmaBuffer:
    """One extent of DMA-able memory, valid for the channel it was allocated for.

    ``zone_id`` and ``serial`` identify the grant, so that a buffer freed twice, or a look-alike
    made by hand, is told apart from the live grant at the same address.
    """

    phys: int
    size: int
    channel: int
    serial: int = -1
    zone_id: int = field(default=0, repr=False)

    def __repr__(self) -> str:
        return (
            f"DmaBuffer(phys=0x{self.phys:X}, size=0x{self.size:X}, channel={self.channel}, "
            f"serial={self.serial})"
        )

    @property
    def end(self) -> int:
        """One past the last byte, so buffers compose as half-open ranges."""
        return self.phys + self.size

    @property
    def rules(self) -> ChannelRules:
        return rules_for(self.channel)

    def overlaps(self, other: DmaBuffer) -> bool:
        return self.phys < other.end and other.phys < self.end


@dataclass
class Backoff:
    """Exponential retry delays as in the Xen balloon worker (docs/reference/linux-isa-dma.md §4.3).

    Doubling keeps a long shortage from costing a retry per second forever, the cap keeps a
    recovered zone from being noticed only minutes later, and :meth:`reset` on progress makes
    the next shortfall start from the short delay again.
    """

    initial: float = 1.0
    factor: float = 2.0
    maximum: float = 32.0
    current: float = field(init=False)

    def __post_init__(self) -> None:
        for name in ("initial", "factor", "maximum"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ZoneConfigError(f"backoff {name} {value!r} is not a finite number")
        if self.initial <= 0:
            raise ZoneConfigError(f"backoff initial {self.initial!r} s must be > 0")
        if self.factor < 1:
            raise ZoneConfigError(f"backoff factor {self.factor!r} must be >= 1 (delays never shrink)")
        if self.maximum < self.initial:
            raise ZoneConfigError(
                f"backoff max {self.maximum!r} s is below the initial delay {self.initial!r} s"
            )
        self.current = self.initial

    def next(self) -> float:
        delay = self.current
        self.current = min(self.current * self.factor, self.maximum)
        return delay

    def reset(self) -> None:
        self.current = self.initial


# --- placement (pure functions over a sorted, coalesced list of free extents) --------------


def _candidate(start: int, size: int, r: ChannelRules) -> int:
    """Lowest address at or above ``start`` where ``size`` bytes meet the alignment and boundary rules.

    Because no buffer is longer than the boundary, if the aligned start would cross, the next
    boundary cannot; and if that does not fit in the extent, no later address in it does either,
    so this single candidate makes first fit complete.
    """
    p = start + (-start % r.align)
    if r.crosses(p, size):
        p = (p // r.boundary + 1) * r.boundary
    return p


def _first_fit(extents: Sequence[Extent], size: int, r: ChannelRules) -> int | None:
    for start, end in extents:
        p = _candidate(start, size, r)
        if p + size <= end:
            return p
    return None


def _largest(extents: Sequence[Extent], r: ChannelRules) -> int:
    best = 0
    for start, end in extents:
        p = start + (-start % r.align)
        while p < end and best < r.max_length:
            edge = min(end, (p // r.boundary + 1) * r.boundary)
            length = edge - p
            length -= length % r.align
            best = max(best, length)
            p = edge
    return min(best, r.max_length)


def _take(extents: list[Extent], phys: int, size: int) -> None:
    i = bisect.bisect_right(extents, phys, key=lambda x: x[0]) - 1
    start, end = extents[i] if i >= 0 else (0, 0)
    if not (start <= phys and phys + size <= end):
        raise AssertionError(f"0x{phys:X}+0x{size:X} is not inside a free extent")  # a bug, not a user error
    pieces = [(s, e) for s, e in ((start, phys), (phys + size, end)) if e > s]
    extents[i : i + 1] = pieces


def _give(extents: list[Extent], phys: int, size: int) -> None:
    end = phys + size
    i = bisect.bisect_left(extents, phys, key=lambda x: x[0])
    if (i > 0 and extents[i - 1][1] > phys) or (i < len(extents) and extents[i][0] < end):
        raise AssertionError(f"0x{phys:X}+0x{size:X} overlaps free memory")  # a bug, not a user error
    if i > 0 and extents[i - 1][1] == phys:
        i -= 1
        phys = extents[i][0]
        del extents[i]
    if i < len(extents) and extents[i][0] == end:
        end = extents[i][1]
        del extents[i]
    extents.insert(i, (phys, end))


def _plan(extents: Sequence[Extent], sizes: Sequence[int], r: ChannelRules) -> list[int] | None:
    """Place a whole set, or say it cannot be placed now.

    Request order first (what the caller would see from sequential allocations), then largest
    first, which packs boundary-limited sets that request order strands. The same planner
    decides both "never fits" at request time and the repacking of partial grants, so a set
    accepted up front is always placeable once everyone else has freed.
    """
    orders = [list(range(len(sizes))), sorted(range(len(sizes)), key=lambda i: -sizes[i])]
    for order in orders:
        free = list(extents)
        places: list[int] = [0] * len(sizes)
        for i in order:
            p = _first_fit(free, sizes[i], r)
            if p is None:
                break
            _take(free, p, sizes[i])
            places[i] = p
        else:
            return places
    return None


def _sizes(sizes: Iterable[int]) -> tuple[int, ...]:
    try:
        return tuple(sizes)
    except TypeError:
        raise InvalidRequestError(f"sizes {sizes!r} is not a sequence of byte counts") from None


def _describe(r: ChannelRules) -> str:
    even = ", even address and length" if r.align > 1 else ""
    return (
        f"{r.width}-bit channel: below 16 MiB, no {r.boundary >> 10} KiB boundary crossed{even}, "
        f"1..{r.max_length} bytes"
    )


# --- requests -------------------------------------------------------------------------------


@dataclass(eq=False)
class _Request:
    sizes: tuple[int, ...]
    rules: ChannelRules
    future: asyncio.Future[list[DmaBuffer]]
    many: bool
    got: list[DmaBuffer | None] = field(default_factory=list)
    grants: int = 0  #: grants so far, so the waiting task sees progress and resets its backoff
    poke: asyncio.Future[None] | None = None

    def __post_init__(self) -> None:
        self.got = [None] * len(self.sizes)

    @property
    def channel(self) -> int:
        return self.rules.channel

    @property
    def obtained(self) -> int:
        return sum(b is not None for b in self.got)

    @property
    def complete(self) -> bool:
        return self.obtained == len(self.sizes)


# --- the zone -------------------------------------------------------------------------------


class DmaZone:
    """Allocator of rule-abiding DMA buffers in the physical window [start, end).

    ``sleep`` and ``clock`` are injectable so that a virtual-time backend (or a test) can drive
    the retry timer and the timeouts without waiting in real time; they default to
    :func:`asyncio.sleep` and the running loop's clock.
    """

    def __init__(
        self,
        start: int,
        end: int,
        *,
        backoff_initial: float = 1.0,
        backoff_factor: float = 2.0,
        backoff_max: float = 32.0,
        sleep: SleepFn | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        for name, value in (("start", start), ("end", end)):
            if type(value) is not int:
                raise ZoneConfigError(f"zone {name} {value!r} is not an integer physical address")
        if start < 0:
            raise ZoneConfigError(f"zone start 0x{start:X} is negative")
        if start >= end:
            raise ZoneConfigError(f"zone [0x{start:X}, 0x{end:X}) is empty: start must be below end")
        if end > DMA_LIMIT:
            raise ZoneConfigError(
                f"zone end 0x{end:X} is above 16 MiB (0x{DMA_LIMIT:X}): ISA DMA generates 24-bit "
                f"addresses and cannot reach it (DMA-ISA-LPC)"
            )
        Backoff(backoff_initial, backoff_factor, backoff_max)  # validate now, not at the first wait
        self.start, self.end = start, end
        self.backoff_initial = backoff_initial
        self.backoff_factor = backoff_factor
        self.backoff_max = backoff_max
        self._sleep: SleepFn = sleep if sleep is not None else asyncio.sleep
        self._clock = clock
        self._id = next(_zone_ids)
        self._next_serial = 0  #: serials below this were issued by this zone
        self._free: list[Extent] = [(start, end)]
        self._live: dict[int, DmaBuffer] = {}  #: serial -> buffer, handed out or reserved
        self._reserved: dict[int, _Request] = {}  #: serial -> waiting request holding it
        self._queue: deque[_Request] = deque()

    # --- introspection ----------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def free_bytes(self) -> int:
        return sum(e - s for s, e in self._free)

    @property
    def free_extents(self) -> list[Extent]:
        return list(self._free)

    @property
    def allocated(self) -> list[DmaBuffer]:
        """Every extent not free, by address: handed out, and partial grants of waiting requests.

        Partial grants are listed so that ``free_bytes + sum of sizes == size`` always holds;
        :meth:`free` refuses them (:class:`ReservedBufferError`).
        """
        return sorted(self._live.values(), key=lambda b: b.phys)

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def largest_free(self, channel: int) -> int:
        """The largest single buffer ``channel`` could get from the free memory right now."""
        return _largest(self._free, rules_for(channel))

    def __repr__(self) -> str:
        return (
            f"DmaZone(start=0x{self.start:X}, end=0x{self.end:X}, free={self.free_bytes}, "
            f"allocated={len(self._live)}, waiting={len(self._queue)})"
        )

    # --- allocation -------------------------------------------------------------------------

    async def alloc(self, size: int, channel: int, timeout: float | None = None) -> DmaBuffer:
        """One buffer for ``channel``, waiting (and retrying) up to ``timeout`` seconds.

        ``timeout=None`` waits forever, ``0`` tries once. A request that breaks a DMA rule
        raises that rule's :class:`~hil.errors.DmaRuleError` without waiting.
        """
        (buf,) = await self._request((size,), channel, timeout, many=False)
        return buf

    async def alloc_many(
        self, sizes: Iterable[int], channel: int, timeout: float | None = None
    ) -> list[DmaBuffer]:
        """Buffers for all ``sizes`` (in that order), keeping partial grants while it waits.

        On timeout or cancellation everything obtained so far is released and the error says how
        many had been obtained: the caller gets all of them or none.
        """
        return await self._request(_sizes(sizes), channel, timeout, many=True)

    def alloc_nowait(self, size: int, channel: int) -> DmaBuffer:
        """One buffer now or :class:`ZoneExhaustedError`; never overtakes a waiting request."""
        (buf,) = self._now((size,), channel)
        return buf

    def alloc_many_nowait(self, sizes: Iterable[int], channel: int) -> list[DmaBuffer]:
        """All buffers now or none (like ``alloc_xenballooned_pages``, docs/reference/linux-isa-dma.md §4.3)."""
        return self._now(_sizes(sizes), channel)

    def free(self, buf: DmaBuffer) -> None:
        """Return ``buf``; the head waiting request is served before this returns."""
        if not isinstance(buf, DmaBuffer):
            raise ForeignBufferError(f"{buf!r} is not a DmaBuffer")
        live = self._live.get(buf.serial) if buf.zone_id == self._id else None
        if live is not None and live == buf:
            if buf.serial in self._reserved:
                raise ReservedBufferError(
                    f"{buf!r} is a partial grant of a waiting alloc_many, not yet handed out: "
                    f"cancel that request to release it"
                )
            self._release(buf)
            log.debug("dma_free", zone=self._id, phys=buf.phys, size=buf.size, channel=buf.channel)
            self._serve()
            return
        if buf.zone_id == self._id and 0 <= buf.serial and live is None and buf.serial < self._next_serial:
            raise DoubleFreeError(
                f"double free of {buf!r}: this zone already took it back "
                f"(0x{buf.phys:X}..0x{buf.end - 1:X} may belong to someone else by now)"
            )
        raise ForeignBufferError(
            f"{buf!r} was not allocated from {self!r}: free it to the zone that gave it out"
        )

    # --- internals --------------------------------------------------------------------------

    def _validate(self, sizes: tuple[int, ...], channel: int) -> ChannelRules:
        """Refuse now what could never succeed: rule breaks, and sets too big for the empty zone."""
        r = rules_for(channel)
        for size in sizes:
            check_buffer(channel, 0, size)  # length range and evenness; address rules are placement's
        if sizes and _plan([(self.start, self.end)], sizes, r) is None:
            what = f"{sizes[0]} bytes" if len(sizes) == 1 else f"buffers of {list(sizes)} bytes"
            raise ZoneTooSmallError(
                f"{what} for channel {channel} cannot be placed in zone [0x{self.start:X}, 0x{self.end:X}) "
                f"even when it is entirely free ({_describe(r)}; the largest such buffer here is "
                f"{_largest([(self.start, self.end)], r)} bytes)"
            )
        return r

    def _grant(self, req: _Request | None, size: int, phys: int, r: ChannelRules) -> DmaBuffer:
        check_buffer(r.channel, phys, size)  # cannot fail by construction; the rules module has the last word
        _take(self._free, phys, size)
        buf = DmaBuffer(phys, size, r.channel, self._next_serial, self._id)
        self._next_serial += 1
        self._live[buf.serial] = buf
        if req is not None:
            self._reserved[buf.serial] = req
        return buf

    def _release(self, buf: DmaBuffer) -> None:
        del self._live[buf.serial]
        self._reserved.pop(buf.serial, None)
        _give(self._free, buf.phys, buf.size)

    def _now(self, sizes: tuple[int, ...], channel: int) -> list[DmaBuffer]:
        r = self._validate(sizes, channel)
        if self._queue:
            raise ZoneExhaustedError(
                f"{len(self._queue)} earlier request(s) are waiting and are served first (FIFO): "
                + self._shortfall(sizes, r)
            )
        places = _plan(self._free, sizes, r)
        if places is None:
            raise ZoneExhaustedError("not enough DMA memory now: " + self._shortfall(sizes, r))
        return [self._grant(None, s, p, r) for s, p in zip(sizes, places, strict=True)]

    def _shortfall(self, sizes: Sequence[int], r: ChannelRules, obtained: int | None = None) -> str:
        if len(sizes) == 1:
            want = f"wanted {sizes[0]} bytes (0x{sizes[0]:X})"
        else:
            want = f"wanted {len(sizes)} buffers of {list(sizes)} bytes (total {sum(sizes)})"
        had = "" if obtained is None else f"; had obtained {obtained} of {len(sizes)} (released)"
        return (
            f"{want} on channel {r.channel} ({_describe(r)}){had}; free: {self.free_bytes} bytes in "
            f"{len(self._free)} extent(s) of zone [0x{self.start:X}, 0x{self.end:X}), "
            f"largest usable for channel {r.channel}: {self.largest_free(r.channel)} bytes"
        )

    def _serve(self) -> None:
        """Grant memory to waiting requests in arrival order, stopping at the first unsatisfied one.

        Called on every change that could help (a free, a request leaving the queue, a timer
        retry), so a waiter is served synchronously at the moment memory appears, before any
        later caller can take it.
        """
        while self._queue:
            req = self._queue[0]
            before = req.grants
            self._advance(req)
            if not req.complete:
                if req.grants != before:
                    log.info("dma_alloc_partial", zone=self._id, channel=req.channel,
                             obtained=req.obtained, wanted=len(req.sizes))
                    if req.poke is not None and not req.poke.done():
                        req.poke.set_result(None)
                return
            self._queue.popleft()
            bufs = [b for b in req.got if b is not None]
            for b in bufs:
                self._reserved.pop(b.serial, None)
            req.future.set_result(bufs)

    def _advance(self, req: _Request) -> None:
        """Take what can be taken for the head request; repack its partial grants if that completes it.

        Partial grants are the request's own until it is complete, so moving them is invisible to
        anyone; without this, grants placed while memory was fragmented could strand the rest
        forever even in an otherwise empty zone.
        """
        r = req.rules
        for i, size in enumerate(req.sizes):
            if req.got[i] is None:
                p = _first_fit(self._free, size, r)
                if p is not None:
                    req.got[i] = self._grant(req, size, p, r)
                    req.grants += 1
        if req.complete or not req.obtained:
            return
        free = list(self._free)
        for b in req.got:
            if b is not None:
                _give(free, b.phys, b.size)
        places = _plan(free, req.sizes, r)
        if places is None:
            return
        for b in req.got:
            if b is not None:
                self._release(b)
        req.got = [self._grant(req, s, p, r) for s, p in zip(req.sizes, places, strict=True)]
        req.grants += 1
        log.info("dma_alloc_repack", zone=self._id, channel=r.channel, sizes=list(req.sizes))

    def _abandon(self, req: _Request) -> int:
        """Undo everything a request holds, whether it is still queued or was granted but not delivered."""
        if req in self._queue:
            self._queue.remove(req)
        held = [b for b in req.got if b is not None and self._live.get(b.serial) is b]
        for b in held:
            self._release(b)
        self._serve()
        return len(held)

    def _timeout(self, req: _Request, timeout: float, retries: int) -> AllocationTimeout:
        """The error that tells a bench user what was wanted and what the zone had at the end.

        Built before the request's partial grants are released, so the free figures are what
        the request was up against, not what its own give-back made free.
        """
        obtained = req.obtained if req.many else None
        error = AllocationTimeout(
            f"DMA allocation gave up after {timeout:g} s: " + self._shortfall(req.sizes, req.rules, obtained)
        )
        # attributes for programs; the message is for people
        error.sizes, error.channel, error.timeout = req.sizes, req.channel, timeout
        error.obtained, error.retries = req.obtained, retries
        error.free_bytes = self.free_bytes
        error.largest_free = self.largest_free(req.channel)
        log.warning("dma_alloc_timeout", zone=self._id, channel=req.channel, sizes=list(req.sizes),
                    timeout=timeout, obtained=req.obtained, retries=retries,
                    free_bytes=self.free_bytes, largest_free=self.largest_free(req.channel))
        return error

    async def _request(
        self, sizes: tuple[int, ...], channel: int, timeout: float | None, *, many: bool
    ) -> list[DmaBuffer]:
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0
        ):
            raise InvalidRequestError(
                f"timeout {timeout!r} must be None (wait forever) or a number of seconds >= 0"
            )
        r = self._validate(sizes, channel)
        if not sizes:
            return []
        loop = asyncio.get_running_loop()
        clock = self._clock or loop.time
        req = _Request(sizes, r, loop.create_future(), many)
        self._queue.append(req)
        self._serve()
        if req.future.done():
            return req.future.result()

        started = clock()
        deadline = None if timeout is None else started + timeout
        backoff = Backoff(self.backoff_initial, self.backoff_factor, self.backoff_max)
        timer: asyncio.Future[object] | None = None
        delay = 0.0
        retries = 0
        seen = req.grants
        log.info("dma_alloc_wait", zone=self._id, channel=channel, sizes=list(sizes), timeout=timeout,
                 obtained=req.obtained, queued=len(self._queue), free_bytes=self.free_bytes,
                 largest_free=self.largest_free(channel))
        try:
            while True:
                if req.future.done():
                    bufs = req.future.result()
                    log.info("dma_alloc_granted", zone=self._id, channel=channel, sizes=list(sizes),
                             waited=clock() - started, retries=retries)
                    return bufs
                if req.grants != seen:  # progress counts as success: start the backoff over (§4.3)
                    seen = req.grants
                    backoff.reset()
                    if timer is not None:
                        timer.cancel()
                        timer = None
                now = clock()
                if timeout is not None and deadline is not None and now >= deadline:
                    raise self._timeout(req, timeout, retries)
                if timer is None:
                    delay = backoff.next()
                    if deadline is not None:
                        delay = min(delay, deadline - now)
                    timer = asyncio.ensure_future(self._sleep(delay))
                req.poke = loop.create_future()
                waiting: set[asyncio.Future[Any]] = {req.future, req.poke, timer}
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                req.poke = None
                if timer.done() and not req.future.done():
                    timer.result()  # an injected sleep that failed fails the request
                    timer = None
                    retries += 1
                    log.debug("dma_alloc_retry", zone=self._id, channel=channel, sizes=list(sizes),
                              attempt=retries, delay=delay, obtained=req.obtained)
                    self._serve()
        except BaseException as exc:
            released = self._abandon(req)
            if not isinstance(exc, AllocationTimeout):
                log.info("dma_alloc_cancelled", zone=self._id, channel=channel, sizes=list(sizes),
                         released=released, reason=type(exc).__name__)
            raise
        finally:
            req.poke = None
            if timer is not None:
                timer.cancel()
