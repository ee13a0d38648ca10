"""Bus arbitration of the simulated PC/AT (``intel`` profile): who gets the bus, and for how long.

References: docs/reference/8237.md §3.5 (single mode gives the bus back after every transfer, demand
mode holds it while DREQ stays active up to TC, a cascade channel relays DREQ/DACK for a bus master
until DREQ drops; DMA1's HRQ is DMA2's DREQ0) and §3.9 (fixed and rotating priority; on the AT
DMA1's channels rank as a group at channel 4's place in DMA2's order).

The machine is driven through its ports only, in virtual time: a CPU port access happens between
two bus grants, never inside one. Devices here are deliberately plain (``supply`` only, or a
``burst_units`` hint without :attr:`Device.isolated`) so that nothing but transfer-by-transfer
arbitration can give the expected order.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from hil.errors import DeviceError
from hil.ports import DMA1, DMA2, channel_ports
from hil.sim.devices import BusMaster, Device, Source
from hil.sim.machine import Machine, Timing

SINGLE_WRITE = 0x44  #: single mode, I/O -> memory (docs/reference/8237.md §2.5)
DEMAND_WRITE = 0x04  #: demand mode, I/O -> memory
CASCADE = 0xC0
ROTATING = 0x10  #: command bit 4 (docs/reference/8237.md §2.4, §3.9)


def program(m: Machine, ch: int, mode: int, count: int, *, addr: int = 0, page: int = 0, unmask: bool = True) -> None:
    """Linux's order (docs/reference/linux-isa-dma.md §2 variant 1); ``count`` is the register value."""
    p = channel_ports(ch)
    c = p.ctrl
    writes = [(c.single_mask, 0x04 | p.local), (c.clear_ff, 0), (c.mode, mode | p.local), (p.page, page)]
    writes += [(p.addr, addr & 0xFF), (p.addr, addr >> 8), (p.count, count & 0xFF), (p.count, count >> 8)]
    if unmask:
        writes.append((c.single_mask, p.local))
    for port, value in writes:
        m.io_write(port, value)


def unmask(m: Machine, ch: int) -> None:
    p = channel_ports(ch)
    m.io_write(p.ctrl.single_mask, p.local)


def read_count(m: Machine, ch: int) -> int:
    p = channel_ports(ch)
    m.io_write(p.ctrl.clear_ff, 0)
    return m.io_read(p.count) | (m.io_read(p.count) << 8)


def unit_bytes(ch: int) -> int:
    return 2 if ch >= 4 else 1


class Unit(Device):
    """A card that implements only ``supply``: DREQ is high while it has units queued.

    ``hook`` runs inside its ``at``-th supply cycle (a card whose transfer makes another card
    request, e.g. a two-channel board). With ``hint`` it tells the machine its DREQ stays up for
    all queued units — true, and still not :attr:`Device.isolated`, because of the hook.
    """

    def __init__(
        self, units: int, log: list[int], *, at: int = 0, hook: Callable[[], None] | None = None, hint: bool = False
    ) -> None:
        super().__init__(dreq=units > 0)
        self.queued = units
        self.sent = 0
        self.log = log
        self.at = at
        self.hook = hook
        self.hint = hint

    def feed(self, units: int) -> None:
        self.queued += units
        self.dreq = self.queued > 0

    def value(self, n: int) -> int:
        return (0x41 + 7 * n) & 0xFF

    def supply(self, channel: int, width: int) -> int:
        self.sent += 1
        self.queued -= 1
        self.log.append(channel)
        if self.sent == self.at and self.hook is not None:
            self.hook()
        if not self.queued:
            self.dreq = False
        v = self.value(self.sent)
        return v if width == 8 else v | (v ^ 0xFF) << 8

    def burst_units(self, channel: int, width: int, limit: int) -> int:
        if self.hint and self.dreq:
            return min(limit, self.queued)
        return super().burst_units(channel, width, limit)


class Raised(Source):
    """A source whose DREQ another card raises; logs one entry per unit it supplies."""

    def __init__(self, units: int, ch: int, log: list[int]) -> None:
        super().__init__(bytes(range(1, 1 + units * unit_bytes(ch))), dreq=False)
        self.log = log

    def raise_dreq(self) -> None:
        self.dreq = True

    def supply_many(self, channel: int, count: int, width: int) -> bytes:
        self.log.extend([channel] * count)
        return super().supply_many(channel, count, width)


class LoggedMaster(BusMaster):
    """A bus master that logs its tenure and may make another card request during it."""

    def __init__(self, ch: int, log: list[int], hold_ns: int, hook: Callable[[], None] | None = None) -> None:
        super().__init__(hold_ns, data=b"\xa5" * 4, addr=0x9000 + 0x10 * ch)
        self.log = log
        self.hook = hook

    def master_cycles(self, channel: int, memory: bytearray, budget_ns: int) -> int:
        self.log.append(channel)
        if self.hook is not None:
            self.hook()
        return super().master_cycles(channel, memory, budget_ns)


def alternate(first: int, first_n: int, second: int, second_n: int) -> list[int]:
    """Two requesters under rotating priority (§3.9: the one just served drops to lowest)."""
    out: list[int] = []
    while first_n or second_n:
        if first_n:
            out.append(first)
            first_n -= 1
        if second_n:
            out.append(second)
            second_n -= 1
    return out


def rotating(m: Machine) -> None:
    m.io_write(DMA1.command, ROTATING)
    m.io_write(DMA2.command, ROTATING)


# (running channel, channel its card makes request mid-run): within DMA1, within DMA2, and a
# DMA2 channel against DMA1's group, which ranks at channel 4's place (above 5-7) in DMA2's order
PAIRS = [(3, 0), (7, 5), (5, 1)]
RUN, K, RAISED = 8, 3, 4  # units of the running card, the unit that raises, units of the raised card


def race(mode: int, run: int, raised: int, *, hint: bool, rotate: bool = False) -> tuple[Machine, list[int], Unit]:
    m = Machine()
    if rotate:
        rotating(m)
    program(m, run, mode, RUN - 1, page=0x20)
    program(m, raised, SINGLE_WRITE, RAISED - 1, page=0x40)
    log: list[int] = []
    other = Raised(RAISED, raised, log)
    card = Unit(RUN, log, at=K, hook=other.raise_dreq, hint=hint)
    m.attach(raised, other)
    m.attach(run, card)  # attaching takes no virtual time; the requests meet in run_until_idle
    m.run_until_idle()
    return m, log, card


# ---------------------------------------------------------------------------------------
# single mode: one transfer per grant (§3.5)


@pytest.mark.parametrize(("run", "raised"), PAIRS)
def test_single_mode_higher_request_raised_mid_run_wins_the_next_cycle(run, raised):
    """docs/reference/8237.md §3.5: in single mode the bus is given back after every transfer, so a higher
    priority request (§3.9 fixed: 0 > 3, 5 > 7, DMA1's group > 5) raised during the K-th transfer is
    served from the next cycle on, even though the running card's burst_units hint covers its
    whole run; the running channel resumes when the higher one is done."""
    m, log, _ = race(SINGLE_WRITE, run, raised, hint=True)
    assert log == [run] * K + [raised] * RAISED + [run] * (RUN - K)
    assert read_count(m, run) == read_count(m, raised) == 0xFFFF  # both reached TC (§3.1)


@pytest.mark.parametrize(("run", "raised"), PAIRS)
def test_single_mode_rotating_priority_alternates_from_the_raise_on(run, raised):
    """docs/reference/8237.md §3.9 rotating priority: the channel just served drops to lowest, so once the
    second request is up the two alternate, starting with the raised one (§3.5: re-arbitration
    after every single transfer). For (5, 1) the rotation is DMA2's: channel 4 (DMA1's group)
    against channel 5."""
    _, log, _ = race(SINGLE_WRITE, run, raised, hint=True, rotate=True)
    assert log == [run] * K + alternate(raised, RAISED, run, RUN - K)


@pytest.mark.parametrize("ch", [1, 6])
def test_single_mode_lone_isolated_run_as_one_slice_is_indistinguishable(ch):
    """docs/reference/8237.md §3.5: with no other request possible, a single-mode run moved as one slice
    (an isolated Source) ends exactly as transfer-by-transfer arbitration (the same card with
    isolated = False): same memory, registers and virtual time."""

    class Unisolated(Source):
        isolated = False

    results = []
    for cls in (Source, Unisolated):
        m = Machine()
        program(m, ch, SINGLE_WRITE, 99, page=0x30, unmask=False)
        m.attach(ch, cls(bytes(range(1, 201))))
        unmask(m, ch)
        ns = m.run_until_idle()
        results.append((ns, m.mem_read(0x300000, 256), read_count(m, ch), m.channel(ch).cur_addr))
    assert results[0] == results[1]


def test_an_isolated_device_that_raises_another_line_is_refused():
    """Device.isolated is a promise the slice relies on (docs/reference/8237.md §3.5): breaking it is a
    DeviceError naming the channel, not a silently reordered transfer."""
    log: list[int] = []
    m = Machine()
    program(m, 0, SINGLE_WRITE, 3, page=0x40)
    program(m, 3, SINGLE_WRITE, 15, page=0x20)
    other = Raised(4, 0, log)

    class Liar(Source):
        def supply_many(self, channel: int, count: int, width: int) -> bytes:
            other.raise_dreq()
            return super().supply_many(channel, count, width)

    m.attach(0, other)
    m.attach(3, Liar(bytes(16)))
    with pytest.raises(DeviceError, match="channel 3"):
        m.run_until_idle()


# ---------------------------------------------------------------------------------------
# demand mode: the bus is held while DREQ stays active, up to TC (§3.5)


@pytest.mark.parametrize("ch", [1, 3, 5, 7])
def test_demand_burst_is_done_before_the_next_cpu_access(ch):
    """docs/reference/8237.md §3.5: demand mode runs while DREQ stays active; the CPU is in HOLD meanwhile,
    so the count read right after unmasking sees the burst ended — here where the card's DREQ
    dropped (5 of 8 units: paused, progress in the current count, no TC) — and, once the card
    has data again, at TC (§3.1: count 0xFFFF, TC status bit). The card implements only supply."""
    m = Machine()
    program(m, ch, DEMAND_WRITE, 7, page=0x20, unmask=False)
    card = Unit(5, [])
    m.attach(ch, card)
    unmask(m, ch)
    assert read_count(m, ch) == 7 - 5
    card.feed(3)
    assert read_count(m, ch) == 0xFFFF
    status = channel_ports(ch).ctrl.status
    assert m.io_read(status) & (1 << (ch & 3))
    size = unit_bytes(ch)
    expected = b"".join(
        (card.value(n) if size == 1 else card.value(n) | (card.value(n) ^ 0xFF) << 8).to_bytes(size, "little")
        for n in range(1, 9)
    )
    assert m.mem_read(0x200000, 8 * size) == expected


@pytest.mark.parametrize(("run", "raised"), PAIRS)
@pytest.mark.parametrize("rotate", [False, True], ids=["fixed", "rotating"])
def test_demand_burst_is_not_preempted_by_a_higher_request(run, raised, rotate):
    """docs/reference/8237.md §3.5: a demand burst keeps the bus while DREQ stays active, so a request raised
    during it — higher priority by §3.9, or next in rotation — waits for the burst to reach TC; DMA1's
    group waits the same way for a DMA2 demand channel, and a DMA2 channel for DMA1's."""
    _, log, _ = race(DEMAND_WRITE, run, raised, hint=False, rotate=rotate)
    assert log == [run] * RUN + [raised] * RAISED


@pytest.mark.parametrize(("run", "raised"), [(1, 5), (5, 1)])
def test_demand_burst_pauses_when_dreq_drops_and_lets_the_other_in(run, raised):
    """docs/reference/8237.md §3.5: when DREQ drops the demand transfer pauses and the bus is free for the
    other request; when DREQ returns the channel is arbitrated again (§3.9, DMA1's group at channel 4's
    place ranks above 5), and resumes where it paused."""
    m = Machine()
    program(m, run, DEMAND_WRITE, RUN - 1, page=0x20)
    program(m, raised, SINGLE_WRITE, RAISED - 1, page=0x40)
    log: list[int] = []
    other = Raised(RAISED, raised, log)
    card = Unit(K, log, at=K, hook=other.raise_dreq)  # it raises the other line as its DREQ drops
    m.attach(raised, other)
    m.attach(run, card)
    m.run_until_idle()
    card.feed(RUN - K)
    m.run_until_idle()
    assert log == [run] * K + [raised] * RAISED + [run] * (RUN - K)
    assert read_count(m, run) == 0xFFFF


def test_demand_burst_acquires_the_bus_once():
    """docs/reference/8237.md §3.5: a demand burst is one HRQ/HLDA handshake followed by back-to-back
    transfers; the machine's timing charges one acquisition for the whole burst."""
    t = Timing()
    m = Machine(timing=t)
    program(m, 2, DEMAND_WRITE, 15, page=0x20, unmask=False)
    m.attach(2, Unit(16, []))
    m.io_write(DMA1.single_mask, 2)
    assert m.run_until_idle() == (t.acquire_clocks + 16 * t.cycle_clocks) * t.clock_ns


# ---------------------------------------------------------------------------------------
# cascade mode: the bus master behind the channel holds the bus while DREQ is active (§3.5)


@pytest.mark.parametrize("ch", [1, 3, 5, 7])
def test_cascade_channel_grants_its_bus_master_the_bus(ch):
    """docs/reference/8237.md §3.5 'Cascade': the channel relays DREQ to HRQ and HLDA to DACK; the master
    runs its own cycles (here: writes 4 bytes) for its tenure, the CPU's next access comes after
    the whole hold, and the 8237's own registers for the channel do not move."""
    m = Machine()
    program(m, ch, CASCADE, 0x1234, addr=0x0100, page=0x20, unmask=False)
    master = BusMaster(40_000, data=b"\xde\xad\xbe\xef", addr=0x50000)
    m.attach(ch, master)
    before = m.now_ns
    unmask(m, ch)
    count = read_count(m, ch)
    assert m.now_ns - before >= 40_000
    assert master.tenures == 1 and not master.dreq
    assert m.mem_read(0x50000, 4) == b"\xde\xad\xbe\xef"
    assert count == 0x1234 and m.channel(ch).cur_addr == 0x0100


@pytest.mark.parametrize(("master_ch", "raised"), [(2, 0), (6, 5), (5, 1), (1, 5)])
def test_cascade_tenure_is_not_preempted(master_ch, raised):
    """docs/reference/8237.md §3.5: a cascade channel passes HLDA through until the master drops DREQ, so a
    request raised during the tenure — even a higher-priority one (§3.9) — waits for its end."""
    m = Machine()
    program(m, master_ch, CASCADE, 0)
    program(m, raised, SINGLE_WRITE, RAISED - 1, page=0x40)
    log: list[int] = []
    other = Raised(RAISED, raised, log)
    m.attach(raised, other)
    m.attach(master_ch, LoggedMaster(master_ch, log, 20_000, hook=other.raise_dreq))
    m.run_until_idle()
    assert log == [master_ch] + [raised] * RAISED


@pytest.mark.parametrize(
    ("master_ch", "ch", "rotate", "expected"),
    [
        # fixed (§3.9): 0 > 3 inside DMA1; DMA1's group (channel 4's place) > 5-7
        (3, 0, False, [0, 0, 0, 0, 3]),
        (0, 3, False, [0, 3, 3, 3, 3]),
        (7, 5, False, [5, 5, 5, 5, 7]),
        (5, 1, False, [1, 1, 1, 1, 5]),
        (1, 5, False, [1, 5, 5, 5, 5]),
        # rotating: after DMA2 serves channel 4 (any DMA1 channel) channel 5 comes next, and back
        (5, 1, True, [1, 5, 1, 1, 1]),
        (1, 5, True, [1, 5, 5, 5, 5]),
        (3, 0, True, [0, 3, 0, 0, 0]),
    ],
)
def test_cascade_channel_takes_its_place_in_priority(master_ch, ch, rotate, expected):
    """docs/reference/8237.md §3.9: a cascade channel's request is arbitrated like any other; on the AT DMA1
    as a whole (data channel or cascaded master) sits at channel 4's place in DMA2's order. Both
    requests are up at once; the single-mode channel moves 4 units, the master one tenure."""
    m = Machine()
    if rotate:
        rotating(m)
    program(m, master_ch, CASCADE, 0)
    program(m, ch, SINGLE_WRITE, RAISED - 1, page=0x40)
    log: list[int] = []
    other = Raised(RAISED, ch, log)
    m.attach(ch, other)
    m.attach(master_ch, LoggedMaster(master_ch, log, 5_000))
    other.raise_dreq()
    m.run_until_idle()
    assert log == expected


def test_dma1_cascade_master_requests_through_channel_4():
    """docs/reference/8237.md §3.5: DMA1's HRQ is DMA2's DREQ0, so a master requesting on a DMA1 cascade
    channel shows as a channel-4 request in DMA2's status (§2.3) while channel 4 is masked (§3.6:
    the gate is shut, no tenure); unmasking channel 4 lets the tenure run."""
    m = Machine()
    m.io_write(DMA2.single_mask, 0x04)  # shut the gate
    program(m, 2, CASCADE, 0)
    master = BusMaster(5_000)
    m.attach(2, master)
    m.run_until_idle()
    assert master.tenures == 0
    assert m.io_read(DMA1.status) & 0xF0 == 1 << (4 + 2)
    assert m.io_read(DMA2.status) & 0xF0 == 1 << 4
    m.io_write(DMA2.single_mask, 0x00)
    m.run_until_idle()
    assert master.tenures == 1
    assert m.io_read(DMA2.status) & 0xF0 == 0


def test_cascade_master_that_never_drops_dreq_does_not_settle():
    """docs/reference/8237.md §3.5: the bus stays with the master while DREQ is active; one that never
    drops it (a card with no cycles of its own) holds the bus for good, which settle reports."""
    from hil.errors import SettleTimeout

    m = Machine()
    program(m, 6, CASCADE, 0)
    m.attach(6, Device(dreq=True))
    with pytest.raises(SettleTimeout, match="cascade"):
        m.run_until_idle(limit_ns=1_000_000)
