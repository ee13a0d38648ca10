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
