"""The simulator's fast paths against its general path, on random programs (hypothesis).

Each fast path must be indistinguishable from the path it shortcuts: the same results, the same
refusals (error type and message), and the same machine afterwards. Here the one-op
conveniences (``be.inb`` and friends) are compared with one-op ``execute()`` programs.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st

from hil.backends import open_backend
from hil.backends.sim import SimBackend
from hil.ops import In, Out
from hil.ports import DMA1, DMA2

PROPS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: DMA registers (both controllers), page registers, the floppy's ports, nobody's ports and
#: out-of-range or ill-typed ports, so that refusals are compared too
PORTS = st.one_of(
    st.sampled_from([*DMA1.span, *DMA2.span]),
    st.integers(0x80, 0x8F),
    st.integers(0x3F0, 0x3F7),
    st.sampled_from([0xDF, 0x8F, 0x3F7, 0xE0, 0x3F8, 0xFFFF, -1, 0x10000]),  # last decoded, first not
    st.just("0x81"),
)
VALUES = st.one_of(st.integers(0, 0xFF), st.integers(0, 0xFFFF), st.sampled_from([-1, 0x10000, True]))
CALLS = st.lists(st.tuples(st.sampled_from(["inb", "inw", "outb", "outw"]), PORTS, VALUES), max_size=40)
URLS = st.sampled_from(["sim", "sim:?strict=1", "sim:?profile=qemu&strict=1", "sim:?floppy=generate"])


def state(be: SimBackend) -> tuple[object, ...]:
    m = be.machine
    return (m.dma1.snapshot(), m.dma2.snapshot(), bytes(m.pages), m.now_ns, m.idle)


async def general(be: SimBackend, name: str, port: object, value: object) -> object:
    """The path every backend has: an op object and a one-op program."""
    width = 16 if name.endswith("w") else 8
    if name.startswith("in"):
        return (await be.execute([In(port, width)]))[0]  # type: ignore[arg-type]  # ill-typed on purpose
    await be.execute([Out(port, value, width)])  # type: ignore[arg-type]  # ill-typed on purpose
    return None


async def outcome(call: object) -> tuple[str, object]:
    try:
        return "ok", await call  # type: ignore[misc]  # a coroutine
    except Exception as e:  # the refusal itself is what is compared
        return type(e).__name__, str(e)


@PROPS
@given(url=URLS, calls=CALLS, close_at=st.integers(0, 45))
async def test_one_op_conveniences_equal_one_op_programs(url, calls, close_at):
    async with open_backend(url) as fast, open_backend(url) as slow:
        assert isinstance(fast, SimBackend) and isinstance(slow, SimBackend)
        for i, (name, port, value) in enumerate(calls):
            if i == close_at:  # use after close is refused alike
                await fast.close()
                await slow.close()
            args = (port,) if name.startswith("in") else (port, value)
            got = await outcome(getattr(fast, name)(*args))
            want = await outcome(general(slow, name, port, value))
            assert got == want, (name, port, value)
            assert state(fast) == state(slow)


# --- arbitration: Controller.service_mask and Machine.requesters -----------------------------

def reference_requesters(m: object) -> list[int]:
    """The arbitration as it read before the fast path (one wants_service per channel, in the
    priority order): the general path the fast one must equal."""
    d1, d2 = m.dma1, m.dma2  # type: ignore[attr-defined]
    if not d2.enabled:
        return []
    dreq2 = m._dreq_bits(4)  # type: ignore[attr-defined]
    out: list[int] = []
    for local in d2.priority_order():
        if local == 0:
            if d2.enabled and not d2.mask & 1 and d2.select(0) == 3:  # cascade open (§3.6)
                if d1.enabled:
                    dreq1 = m._dreq_bits(0)  # type: ignore[attr-defined]
                    out += [c for c in d1.priority_order() if d1.wants_service(c, dreq1)]
        elif d2.wants_service(local, dreq2):
            out.append(4 + local)
    return out


#: writes that change what the arbiters decide: command, request, single and all mask, mode,
#: master clear, clear mask, on both controllers
CONTROL = st.sampled_from([0x08, 0x09, 0x0A, 0x0B, 0x0D, 0x0E, 0x0F, 0xD0, 0xD2, 0xD4, 0xD6, 0xDA, 0xDC, 0xDE])
WRITES = st.lists(st.tuples(CONTROL, st.integers(0, 0xFF)), max_size=12)
#: devices on both controllers, most of them requesting, so that the order between DMA2's own
#: requesters and DMA1's behind the cascade is decided often
DEVICES = st.dictionaries(st.sampled_from([0, 1, 2, 3, 5, 6, 7]), st.sampled_from([True, True, False]),
                          min_size=2, max_size=7)


@settings(PROPS, max_examples=300)
@given(profile=st.sampled_from(["sim", "sim:?profile=qemu"]), writes=WRITES, devices=DEVICES,
       last=st.tuples(st.integers(0, 3), st.integers(0, 3)), unmask=st.booleans(),
       rotate=st.tuples(st.booleans(), st.booleans()))
async def test_arbitration_fast_path_equals_the_general_one(profile, writes, devices, last, unmask, rotate):
    from hil.sim.devices import Source

    async with open_backend(profile) as be:
        assert isinstance(be, SimBackend)
        m = be.machine
        for ch, level in devices.items():
            m.attach(ch, Source(b"\x01" * 4, dreq=level))
        m.dma1.last_served, m.dma2.last_served = last  # rotating priority starts after these
        for port, value in writes:
            m.dma1.write_control((port & 0x0F), value) if port < 0x10 else m.dma2.write_control((port - 0xC0) // 2, value)
        for ctl, rotating in zip((m.dma1, m.dma2), rotate):  # states random writes rarely reach
            if unmask:
                ctl.mask = 0
            if rotating:
                ctl.command |= 0x10
        for ctl, first in ((m.dma1, 0), (m.dma2, 4)):
            dreq = m._dreq_bits(first)
            assert ctl.service_mask(dreq) == sum(1 << c for c in range(4) if ctl.wants_service(c, dreq))
        if profile == "sim":  # the qemu model has its own requesters (QEMU's DMA_run)
            assert m.requesters() == reference_requesters(m)


#: every DMA register of both controllers, channel registers included, and the page registers
ANY_DMA_PORT = st.sampled_from([*DMA1.span, *DMA2.span, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8A, 0x8B])


@settings(PROPS, max_examples=200)
@given(profile=st.sampled_from(["sim", "sim:?profile=qemu"]), devices=DEVICES,
       writes=st.lists(st.tuples(ANY_DMA_PORT, st.integers(0, 0xFF)), max_size=30))
async def test_idle_is_never_claimed_while_a_channel_requests(profile, devices, writes):
    """The machine skips arbitration while it knows nothing can be serviced, and keeps knowing
    it across writes that cannot change that (address and count on the 8237, clear flip-flop):
    after every write, idle must imply that the general arbitration finds no requester."""
    from hil.sim.devices import Source

    async with open_backend(profile) as be:
        assert isinstance(be, SimBackend)
        m = be.machine
        for ch, level in devices.items():
            m.attach(ch, Source(b"\x01" * 0x20000, dreq=level))
        for port, value in writes:
            await be.outb(port, value)
            if m._idle and profile == "sim":
                assert reference_requesters(m) == [], (port, value)
            elif m._idle:
                assert m.requesters() == [], (port, value)


@PROPS
@given(drives=st.lists(st.tuples(st.integers(0, 15), st.booleans()), max_size=30))
async def test_all_irq_lines_at_once_equal_each_line_asked(drives):
    """What the backend reports after every program, in one pass, against irq_level/irq_count."""
    async with open_backend("sim") as be:
        assert isinstance(be, SimBackend)
        m = be.machine
        for n, level in drives:
            m.set_irq(n, level)
            levels, counts = m.irq_bus.lines()
            assert levels == sum(1 << k for k in range(16) if m.irq_level(k))
            assert counts == tuple(m.irq_count(k) for k in range(16))
