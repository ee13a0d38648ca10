"""The recording wrapper forwards the backend interface and nothing else (issue 12 item 3).

Code written against a recording over ``sim:`` must run unchanged over a backend that has no
simulator in process (an agent, QEMU, hardware), so the wrapper must not leak the inner
backend's ``machine``; and every interface method must still reach the inner backend, be
recorded where it runs ops, and answer as the inner backend would on its own.
"""

from __future__ import annotations

import inspect

import pytest

from hil.backends.base import Backend, Capability
from hil.backends.recording import RecordingBackend
from hil.backends.sim import SimBackend
from hil.errors import BackendClosedError, MemoryRangeError
from hil.ops import DevAttach, DeviceState, DevState, In, MemRead, Out, Settle

#: every public name of the interface, so a method added to Backend is covered without editing here
INTERFACE = sorted(name for name in dir(Backend) if not name.startswith("_"))


async def test_no_machine_and_no_other_inner_attribute() -> None:
    inner = SimBackend()
    inner.extra = "only on the inner backend"  # type: ignore[attr-defined]  # what a forwarder would leak
    async with RecordingBackend(inner) as be:
        assert not hasattr(be, "machine")
        assert not hasattr(be, "extra")


def test_every_interface_name_is_there() -> None:
    be = RecordingBackend(SimBackend())
    assert {"execute", "check", "settle", "virtual_time_ns", "capabilities", "read_mem"} <= set(INTERFACE)
    assert [name for name in INTERFACE if not hasattr(be, name)] == []


# (method, arguments, the ops it records): the conveniences, each one program of one op
CONVENIENCES = [
    ("outb", (0x81, 0x12), ["Out"]),
    ("outw", (0xC4, 0x3456), ["Out"]),
    ("inb", (0x81,), ["In"]),
    ("inw", (0xC4,), ["In"]),
    ("write_mem", (0x1000, b"\x01\x02\x03"), ["MemWrite"]),
    ("read_mem", (0x1000, 3), ["MemRead"]),
    ("fill_mem", (0x2000, 4, 0x5A), ["MemFill"]),
    ("delay", (25,), ["Delay"]),
]


async def test_each_method_answers_as_the_inner_backend_and_is_recorded() -> None:
    """The same calls on a bare sim and on a recording over another: equal answers, equal
    virtual clocks, and one recorded program per convenience call."""
    plain, inner = SimBackend(), SimBackend()
    async with plain, RecordingBackend(inner) as be:
        for n, (name, args, ops) in enumerate(CONVENIENCES):
            want = await getattr(plain, name)(*args)
            got = await getattr(be, name)(*args)
            assert got == want, name
            assert [type(e.op).__name__ for e in be.trace if e.program == n] == ops, name
            assert be.virtual_time_ns() == plain.virtual_time_ns() == inner.virtual_time_ns(), name
        assert be.programs == len(CONVENIENCES)
        assert await be.read_mem(0x1000, 3) == b"\x01\x02\x03" and await be.inb(0x81) == 0x12

        program = [DevAttach(1, "source", b"abcd"), Out(0x0A, 0x05), Out(0x0C, 0), Out(0x0B, 0x45),
                   Out(0x83, 0x03), Out(0x02, 0), Out(0x02, 0), Out(0x03, 3), Out(0x03, 0), Out(0x0A, 0x01),
                   Settle(), In(0x08), MemRead(0x30000, 4), DevState(1)]
        want_results = await plain.execute(program)
        results = await be.execute(program)
        assert results == want_results
        assert results[1] == b"abcd" and isinstance(results[2], DeviceState) and results[2].moved == 4
        last = [e for e in be.trace if e.program == be.programs - 1]
        assert [e.op for e in last] == program
        assert [e.result for e in last if e.result is not None] == results

        await be.settle()
        assert be.capabilities == inner.capabilities
        assert Capability.DEVICES in be.capabilities and be.capabilities.memory_window == (0, 16 << 20)


async def test_check_and_refusals_are_the_inner_backends() -> None:
    async with RecordingBackend(SimBackend(mem_size=1 << 20)) as be:
        with pytest.raises(MemoryRangeError):
            be.check([MemRead(1 << 20, 1)])
        with pytest.raises(MemoryRangeError):
            await be.read_mem(1 << 20, 1)
        assert be.trace == []


async def test_open_and_close_reach_the_inner_backend() -> None:
    inner = SimBackend()
    be = RecordingBackend(inner)
    await be.open()
    assert not be.closed
    await be.close()
    assert be.closed and inner.closed
    with pytest.raises(BackendClosedError):
        await be.inb(0x08)


async def test_a_reset_of_the_inner_backend_reaches_the_wrappers_listeners() -> None:
    """The driver layer restores after a reset it hears of (hil.dma): over a recording of an
    agent the reset is the agent's, and the listeners hear it naming the wrapper they know."""
    inner = SimBackend()
    heard: list[Backend] = []

    async def listener(backend: Backend) -> None:
        heard.append(backend)

    async with RecordingBackend(inner) as be:
        be.add_reset_listener(listener)
        await inner._notify_reset()  # what an agent backend does after a re-hello finds a new boot
        assert heard == [be]
        be.remove_reset_listener(listener)
        await inner._notify_reset()
        assert heard == [be]


def test_interface_methods_are_the_backend_classes_not_a_fallback() -> None:
    """Nothing resolves through ``__getattr__``: every interface name is found on the class."""
    assert "__getattr__" not in vars(RecordingBackend)
    for name in INTERFACE:
        assert inspect.getattr_static(RecordingBackend, name, None) is not None, name
