"""Shared fixtures for the simulator and backend tests.

Profiles: ``intel`` is the datasheet / Intel-chipset PC/AT model (URL ``sim``), ``qemu`` is
QEMU 7.2's i8257 (URL ``sim:?profile=qemu``) — docs/reference/8237.md §5 and docs/reference/qemu-qtest.md §8.

The ``dma`` fixture hands out a small register helper bound to the backend under test. It only
emits the port traffic a Linux driver would (docs/reference/linux-isa-dma.md §1.3: clear the flip-flop, then
LSB/MSB to the same port); every expected value stays in the tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import structlog

from hil.backends import open_backend
from hil.backends.sim import SimBackend
from hil.ops import In, Out
from hil.ports import ControllerPorts, channel_ports, controller_of

URLS = {"intel": "sim", "qemu": "sim:?profile=qemu"}


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """A test that calls ``hil.cli.main`` configures structlog for its captured stderr, which is
    closed once the test ends: leave no trace for the tests after it."""
    yield
    structlog.reset_defaults()


class DmaRegs:
    """Port-level helper: program a channel and read its registers the way drivers do."""

    def __init__(self, be: SimBackend, profile: str) -> None:
        self.be = be
        self.profile = profile
        self.machine = be.machine

    async def program(
        self,
        ch: int,
        mode: int,
        addr: int,
        count: int,
        page: int = 0,
        *,
        unmask: bool = True,
    ) -> None:
        """Linux canonical order (docs/reference/linux-isa-dma.md §2 variant 1): mask, clear FF, mode, page,
        address LSB/MSB, count LSB/MSB, unmask. ``addr``/``count`` are raw register values
        (word address and words-1 on channels 5-7); ``mode`` has its channel bits clear."""
        p = channel_ports(ch)
        c = p.ctrl
        ops = [Out(c.single_mask, 0x04 | p.local), Out(c.clear_ff, 0), Out(c.mode, mode | p.local)]
        if ch != 4:
            ops.append(Out(p.page, page))
        ops += [
            Out(p.addr, addr & 0xFF),
            Out(p.addr, (addr >> 8) & 0xFF),
            Out(p.count, count & 0xFF),
            Out(p.count, (count >> 8) & 0xFF),
        ]
        if unmask:
            ops.append(Out(c.single_mask, p.local))
        await self.be.execute(ops)

    async def _read16(self, ctrl: ControllerPorts, port: int) -> int:
        lo, hi = await self.be.execute([Out(ctrl.clear_ff, 0), In(port), In(port)])
        return lo | (hi << 8)  # type: ignore[operator]

    async def addr(self, ch: int) -> int:
        """Current address register (clears the FF first)."""
        p = channel_ports(ch)
        return await self._read16(p.ctrl, p.addr)

    async def count(self, ch: int) -> int:
        """Current count register (clears the FF first)."""
        p = channel_ports(ch)
        return await self._read16(p.ctrl, p.count)

    async def status(self, ch_or_ctrl: int | ControllerPorts) -> int:
        ctrl = ch_or_ctrl if isinstance(ch_or_ctrl, ControllerPorts) else controller_of(ch_or_ctrl)
        return await self.be.inb(ctrl.status)

    async def mask(self, ch_or_ctrl: int | ControllerPorts) -> int:
        """The mask register where the profile makes it readable: 0x0F/0xDE on Intel chipsets
        (docs/reference/8237.md §2.9), 0x09/0xD2 on QEMU (docs/reference/qemu-qtest.md §8)."""
        ctrl = ch_or_ctrl if isinstance(ch_or_ctrl, ControllerPorts) else controller_of(ch_or_ctrl)
        return await self.be.inb(ctrl.all_mask if self.profile == "intel" else ctrl.request)

    async def masked(self, ch: int) -> bool:
        return bool(await self.mask(ch) & (1 << (ch & 3)))


@pytest.fixture(params=["intel", "qemu"])
def profile(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def be(profile: str) -> AsyncIterator[SimBackend]:
    """An open sim backend of the parametrized profile."""
    async with open_backend(URLS[profile]) as backend:
        yield backend  # type: ignore[misc]


@pytest.fixture
async def intel() -> AsyncIterator[SimBackend]:
    async with open_backend(URLS["intel"]) as backend:
        yield backend  # type: ignore[misc]


@pytest.fixture
async def qemu() -> AsyncIterator[SimBackend]:
    async with open_backend(URLS["qemu"]) as backend:
        yield backend  # type: ignore[misc]


@pytest.fixture
def dma(be: SimBackend, profile: str) -> DmaRegs:
    return DmaRegs(be, profile)


@pytest.fixture
def intel_dma(intel: SimBackend) -> DmaRegs:
    return DmaRegs(intel, "intel")


@pytest.fixture
def qemu_dma(qemu: SimBackend) -> DmaRegs:
    return DmaRegs(qemu, "qemu")
