"""Property tests (hypothesis) of the simulated 8237 pair.

Each example opens a fresh backend (function-scoped fixtures would leak state between examples).
References: docs/reference/8237.md §2.1 (flip-flop), §2.2/§3.1 (count+1 transfers, TC, 0xFFFF after TC), §3.3
and §3.6 (wrap inside the 64 KiB / 128 KiB page), §6 (reference model); §5 for the QEMU column.
"""

from __future__ import annotations

from array import array

from hypothesis import HealthCheck, given, settings, strategies as st

from hil.backends import open_backend
from hil.ops import In, Out
from hil.ports import DMA1, DMA2, PAGE_PORT, POST_PORT, channel_ports
from hil.sim.devices import Source

URLS = {"intel": "sim", "qemu": "sim:?profile=qemu"}
DATA_CHANNELS = [0, 1, 2, 3, 5, 6, 7]
SELECTS = {"demand": 0x00, "single": 0x40, "block": 0x80}
WRITE = 0x04  # transfer type 01: I/O -> memory
DECREMENT = 0x20

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

counts = st.one_of(st.integers(0, 64), st.integers(0, 0xFFFF))


def unit(ch: int) -> int:
    return 2 if ch >= 4 else 1


def data_for(nbytes: int, seed: int) -> bytes:
    """Never zero, so every byte that landed in (zeroed) memory can be found."""
    return bytes(((i * 151 + seed) % 255) + 1 for i in range(nbytes))


async def program(be, ch: int, mode: int, addr: int, count: int, page: int) -> None:
    p = channel_ports(ch)
    c = p.ctrl
    await be.execute(
        [
            Out(c.single_mask, 0x04 | p.local),
            Out(c.clear_ff, 0),
            Out(c.mode, mode | p.local),
            Out(p.page, page),
            Out(p.addr, addr & 0xFF),
            Out(p.addr, addr >> 8),
            Out(p.count, count & 0xFF),
            Out(p.count, count >> 8),
            Out(c.single_mask, p.local),
        ]
    )


async def read16(be, ch: int, port: int) -> int:
    lo, hi = await be.execute([Out(channel_ports(ch).ctrl.clear_ff, 0), In(port), In(port)])
    return lo | (hi << 8)


# ---------------------------------------------------------------------------------------


@PROPS
@given(
    profile=st.sampled_from(["intel", "qemu"]),
    ch=st.sampled_from(DATA_CHANNELS),
    select=st.sampled_from(sorted(SELECTS)),
    count=counts,
    addr=st.integers(0, 0xFFFF),
    seed=st.integers(0, 254),
    data=st.data(),
)
async def test_exactly_count_plus_one_units_move_before_tc(profile, ch, select, count, addr, seed, data):
    """docs/reference/8237.md §3.1: TC comes after exactly count+1 transfers (count 0 → 0xFFFF), not before; a
    device-paced channel moves what the device offers up to that; block mode (datasheet) runs to
    TC once started (§3.5), QEMU does not distinguish modes (docs/reference/qemu-qtest.md §8). The count register
    always reads count - moved (mod 2^16), i.e. 0xFFFF after TC."""
    u = unit(ch)
    needed = count + 1
    available = data.draw(
        st.one_of(st.just(needed), st.integers(max(0, needed - 3), needed + 3), st.integers(0, needed)),
        label="units offered",
    )
    async with open_backend(URLS[profile]) as be:
        await program(be, ch, SELECTS[select] | WRITE, addr, count, page=0x40)
        src = Source(data_for(available * u, seed))
        be.machine.attach(ch, src)
        await be.settle()
        if profile == "intel" and select == "block" and available > 0:
            moved = needed  # once started, block mode runs to TC whatever DREQ does
        else:
            moved = min(available, needed)
        p = channel_ports(ch)
        assert src.pos == min(available, needed) * u
        assert await read16(be, ch, p.count) == (count - moved) & 0xFFFF
        assert await read16(be, ch, p.addr) == (addr + moved) & 0xFFFF
        tc_bit = await be.inb(p.ctrl.status) & (1 << p.local)
        assert bool(tc_bit) == (moved == needed)
        assert src.tc_count == (1 if moved == needed else 0)


def expected_page_image(addr: int, n: int, u: int, decrement: bool, data: bytes) -> bytes:
    """docs/reference/8237.md §3.3/§6: unit i goes to word (addr ± i) mod 2^16 of the page block."""
    image = bytearray(0x10000 * u)
    if not decrement:
        first = min(n, 0x10000 - addr)  # units addr .. 0xFFFF, then 0, 1, ...
        image[addr * u : (addr + first) * u] = data[: first * u]
        if n > first:
            image[: (n - first) * u] = data[first * u :]
        return bytes(image)
    units = array("B" if u == 1 else "H", data)
    units.reverse()  # highest address holds unit 0
    rev = units.tobytes()
    first = min(n, addr + 1)  # units addr, addr-1, ..., addr-first+1
    rest = n - first  # then 0xFFFF, 0xFFFE, ...
    image[(addr - first + 1) * u : (addr + 1) * u] = rev[rest * u :]
    if rest:
        image[(0x10000 - rest) * u :] = rev[: rest * u]
    return bytes(image)


@PROPS
@given(
    ch=st.sampled_from(DATA_CHANNELS),
    select=st.sampled_from(sorted(SELECTS)),
    page=st.integers(0, 0x1F),
    addr=st.integers(0, 0xFFFF),
    count=counts,
    decrement=st.booleans(),
    seed=st.integers(0, 254),
)
async def test_no_byte_outside_the_page_intel(ch, select, page, addr, count, decrement, seed):
    """docs/reference/8237.md §3.3/§3.6: the address counter wraps inside the 64 KiB page (ch0-3) or the 128 KiB
    block (ch5-7, page bit 0 ignored); the page latch never changes. Every unit lands at
    (page block) + ((addr ± i) mod 2^16) * unit, and no byte of memory outside that block is
    touched."""
    u = unit(ch)
    n = count + 1
    data = data_for(n * u, seed)
    async with open_backend("sim:?mem=2M") as be:
        mode = SELECTS[select] | WRITE | (DECREMENT if decrement else 0)
        await program(be, ch, mode, addr, count, page)
        be.machine.attach(ch, Source(data))
        await be.settle()
        block = ((page & 0xFE) << 16) if ch >= 4 else page << 16
        size = 0x10000 * u
        mem = bytes(be.machine.memory)  # a mapping has no count()
        assert len(mem) - mem.count(0) == n * u  # nothing outside the block (data has no zero)
        assert bytes(mem[block : block + size]) == expected_page_image(addr, n, u, decrement, data)
        assert await be.inb(PAGE_PORT[ch]) == page


@PROPS
@given(
    profile=st.sampled_from(["intel", "qemu"]),
    ch=st.sampled_from(DATA_CHANNELS),
    select=st.sampled_from(sorted(SELECTS)),
    addr=st.integers(0, 0xFFFF),
    count=counts,
    decrement=st.booleans(),
    rereads=st.integers(1, 3),
)
async def test_registers_after_tc(profile, ch, select, addr, count, decrement, rereads):
    """docs/reference/8237.md §3.1: after TC without autoinit the current count reads 0xFFFF and the current
    address base ± (count+1) mod 2^16 — QEMU too (§5 'Count reads after TC', docs/reference/qemu-qtest.md §8
    'current address / count'); reading them changes nothing, and Linux's get_dma_residue
    (docs/reference/linux-isa-dma.md §1.3: (1 + LSB + MSB<<8) & 0xFFFF) is 0; the TC status bit is reported once."""
    u = unit(ch)
    async with open_backend(URLS[profile]) as be:
        mode = SELECTS[select] | WRITE | (DECREMENT if decrement else 0)
        await program(be, ch, mode, addr, count, page=0x80)
        be.machine.attach(ch, Source(data_for((count + 1) * u, 1)))
        await be.settle()
        p = channel_ports(ch)
        want_addr = (addr - (count + 1) if decrement else addr + count + 1) & 0xFFFF
        for _ in range(rereads):
            assert await read16(be, ch, p.count) == 0xFFFF
            assert await read16(be, ch, p.addr) == want_addr
            lo, hi = await be.execute([Out(p.ctrl.clear_ff, 0), In(p.count), In(p.count)])
            assert (1 + lo + (hi << 8)) & 0xFFFF == 0
        assert await be.inb(p.ctrl.status) & 0x0F == 1 << p.local
        assert await be.inb(p.ctrl.status) & 0x0F == 0


# ---------------------------------------------------------------------------------------
# §2.1 flip-flop parity


def _ff_ops(profile: str):
    """(ops, toggles) builders: each strategy yields a list of Out/In and which controllers'
    flip-flops it toggles (list of 0/1), or 'clear' entries."""
    ctrl = st.sampled_from([0, 1])
    ports = (DMA1, DMA2)

    def chan_access(c: int, reg: int, read: bool, value: int, odd: bool):
        base = ports[c].reg(reg) + (1 if odd and c == 1 else 0)  # DMA2 odd alias
        return ([In(base)] if read else [Out(base, value)]), [("toggle", c)]

    def mirror_access(reg: int, read: bool, value: int):
        port = 0x10 + reg
        op = In(port) if read else Out(port, value)
        return [op], ([("toggle", 0)] if profile == "intel" else [])

    def wide_access(c: int, reg: int, read: bool, value: int):
        port = ports[c].reg(reg)  # DMA1 reg 0-6: port+1 is the next address/count register
        op = In(port, 16) if read else Out(port, value, 16)
        return [op], [("toggle", c), ("toggle", c)]

    def control(c: int, which: str, value: int):
        p = ports[c]
        op = {
            "status": In(p.status),
            "temp": In(p.temp),
            "mode": Out(p.mode, value),
            "mask": Out(p.single_mask, value),
            "all_mask": Out(p.all_mask, value),
            "clear_mask": Out(p.clear_mask, value),
            "request": Out(p.request, value),
            "command": Out(p.command, value & 0x14),  # no DREQ-polarity games: see the probe
            "page": Out(0x80 + (value & 0x0F), value),
            "post": Out(POST_PORT, value),
            "page_read": In(0x80 + (value & 0x0F)),
            "clear_ff_read": In(p.clear_ff),  # a *read* of 0x0C/0xD8 does not clear it (§5)
            "write_only_read": In(p.reg(0x09 + (value % 7))),
        }[which]
        return [op], []

    def clearing(c: int, master: bool):
        p = ports[c]
        return [Out(p.master_clear if master else p.clear_ff, 0x5A)], [("clear", c)]

    byte = st.integers(0, 0xFF)
    return st.one_of(
        st.builds(chan_access, ctrl, st.integers(0, 7), st.booleans(), byte, st.booleans()),
        st.builds(mirror_access, st.integers(0, 7), st.booleans(), byte),
        st.builds(
            wide_access,
            ctrl,
            st.integers(0, 6),
            st.booleans(),
            st.integers(0, 0xFFFF),
        ),
        st.builds(
            control,
            ctrl,
            st.sampled_from(
                [
                    "status", "temp", "mode", "mask", "all_mask", "clear_mask", "request", "command",
                    "page", "post", "page_read", "clear_ff_read", "write_only_read",
                ]
            ),
            byte,
        ),
        st.builds(clearing, ctrl, st.booleans()),
    )


@PROPS
@given(data=st.data(), profile=st.sampled_from(["intel", "qemu"]))
async def test_flip_flop_parity(data, profile):
    """docs/reference/8237.md §2.1: one FF per controller, toggled by every read or write of an address/count
    port (including the DMA1 mirror 0x10-0x17 on the AT and DMA2's odd aliases, §1.1/§1.2; a
    16-bit access is two byte accesses), cleared by 0x0C/0xD8 and master clear, untouched by any
    other register. After any sequence, each controller's FF equals the parity predicted."""
    steps = data.draw(st.lists(_ff_ops(profile), max_size=40), label="steps")
    ff = [0, 0]
    ops = []
    for step_ops, effects in steps:
        ops += step_ops
        for kind, c in effects:
            ff[c] = 0 if kind == "clear" else ff[c] ^ 1
    async with open_backend(URLS[profile]) as be:
        await be.execute(ops)
        for c, p in enumerate((DMA1, DMA2)):
            # quiesce first (neither write touches the FF): masked, enabled, no mem-to-mem
            await be.execute([Out(p.all_mask, 0x0F), Out(p.command, 0), *(Out(p.request, i) for i in range(4))])
        for c, p in enumerate((DMA1, DMA2)):
            # probe: three bytes to local channel 0's address; the MSB read back names the FF
            # state (FF=0: 11→L 22→M 33→L; FF=1: 11→M 22→L 33→M — QEMU's current address
            # follows the last MSB write, with the same result)
            await be.execute([Out(p.addr(0), 0x11), Out(p.addr(0), 0x22), Out(p.addr(0), 0x33)])
            _, msb = await be.execute([Out(p.clear_ff, 0), In(p.addr(0)), In(p.addr(0))])
            assert msb == (0x22 if ff[c] == 0 else 0x33), (c, ff)
