"""MockBackend: the handler answers, the mock assembles results, refuses and records."""

from __future__ import annotations

import pytest

from hil.backends import _DESCRIPTIONS, _REGISTRY, open_backend
from hil.backends.mock import MockBackend, register_mock
from hil.backends.ops import DevState, In, MemRead, Op, Out, Poll, Result, Settle
from hil.errors import BackendError, HilError, UnsupportedOperationError


async def test_results_in_program_order_one_per_reading_op():
    replies = {In(0x08): 0x0F, MemRead(0x100, 3): b"abc", Poll(0x08, 0x0F, 0x0F, 100): 0x0F}
    async with MockBackend(lambda op: replies.get(op)) as be:
        program: list[Op] = [Out(0x0A, 2), In(0x08), MemRead(0x100, 3), Out(0x0A, 6), Poll(0x08, 0x0F, 0x0F, 100)]
        assert await be.execute(program) == [0x0F, b"abc", 0x0F]
        assert be.programs == [tuple(program)]


@pytest.mark.parametrize("op, reply", [
    (In(0x08), 0x100),  # wider than the 8-bit read
    (In(0x08), b"\x00"),
    (In(0x08), None),
    (MemRead(0, 4), b"abc"),  # one byte short
    (DevState(2), 0),
    (Out(0x0A, 2), 0),  # an op that reads nothing
])
async def test_a_handlers_wrong_reply_is_named_with_its_op(op: Op, reply: Result | None):
    async with MockBackend(lambda _: reply) as be:
        with pytest.raises(BackendError, match="mock handler returned") as err:
            await be.execute([op])
        assert repr(op) in str(err.value)


async def test_a_fault_raised_by_the_handler_stops_the_program_there():
    seen: list[Op] = []

    def handler(op: Op) -> Result | None:
        seen.append(op)
        if op == Out(0x0B, 0x46):
            raise HilError("bus fault")
        return None

    async with MockBackend(handler) as be:
        with pytest.raises(HilError, match="bus fault"):
            await be.execute([Out(0x0A, 6), Out(0x0B, 0x46), Out(0x0A, 2)])
        assert seen == [Out(0x0A, 6), Out(0x0B, 0x46)]


async def test_settle_reaches_the_handler_as_an_op_even_when_ops_leave_it_out():
    seen: list[Op] = []
    async with MockBackend(seen.append, ops=(Out, In)) as be:
        await be.execute([Out(0x0A, 2), Settle(5000), Out(0x0A, 6)])
        await be.settle(0.25)
        with pytest.raises(UnsupportedOperationError):
            await be.execute([MemRead(0, 1)])
    assert seen == [Out(0x0A, 2), Settle(5000), Out(0x0A, 6), Settle(250_000)]


async def test_register_mock_binds_a_handler_to_a_url_scheme(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("hil.backends._REGISTRY", dict(_REGISTRY))
    monkeypatch.setattr("hil.backends._DESCRIPTIONS", dict(_DESCRIPTIONS))
    register_mock("fake", lambda op: 0x42 if isinstance(op, In) else None, memory_window=(0, 1 << 16))
    be = open_backend("fake:?x=1")
    assert isinstance(be, MockBackend) and be.url == "fake:?x=1"
    async with be:
        assert await be.inb(0x81) == 0x42 and be.capabilities.memory_window == (0, 1 << 16)
    with pytest.raises(HilError):
        open_backend("mock:")  # no scheme without a handler
