"""The simulated FT232H line behind ``hil bench link`` (hil.bench.link): no byte may reach the far
end before the wire and the latency timer allow (docs/reference/hil-lessons.md §1.12), or its
figures would beat physics. Only lower bounds are asserted: how late the model is, is what the
benchmark measures, not a property a test may time."""

from __future__ import annotations

import asyncio
import random
import time
from types import SimpleNamespace

import pytest

from hil.backends import open_backend
from hil.bench import link as shaped
from hil.bench.link import SerialFloor, ShapedLink, bench_shaped, floor_for, shaped_pair
from hil.testing import require


@pytest.fixture(params=["timerfd", "loop timer"])
def alarm(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways the model times a delivery: a Linux timerfd, and the loop's own timer elsewhere."""
    if request.param == "timerfd":
        require(shaped._LIBC is not None, "a Linux timerfd (the simulated link's precise timer)")
    else:
        monkeypatch.setattr(shaped, "_timerfd", lambda: None)
    return str(request.param)


def wire_ns(n: int, baud: int) -> int:
    """The least time ``n`` bytes take on an 8N1 line: 10 bit times each, in whole ns, rounded down."""
    return n * 10_000_000_000 // baud


class Received:
    """What one end gets, each delivery with the time it arrived, by :meth:`ShapedLink.on_data`
    (the host's way) or by a task reading (the agent's)."""

    def __init__(self, link: ShapedLink, push: bool) -> None:
        self.deliveries: list[tuple[int, bytes]] = []
        self.more = asyncio.Event()  #: set by each delivery
        self.task: asyncio.Task[None] | None = None
        if push:
            link.on_data(self._got)
        else:
            self.task = asyncio.create_task(self._read(link))

    def _got(self, data: bytes) -> None:
        self.deliveries.append((time.monotonic_ns(), data))
        self.more.set()

    async def _read(self, link: ShapedLink) -> None:
        while data := await link.read():
            self._got(data)

    def total(self) -> int:
        return sum(len(d) for _, d in self.deliveries)


async def test_no_write_arrives_before_its_bytes_have_crossed_the_line_and_the_timer(alarm: str) -> None:
    rng = random.Random(16)
    for _ in range(3):
        baud = rng.choice([115_200, 921_600, 3_000_000])
        latency = rng.choice([0.0005, 0.001, 0.002])
        host, agent = shaped_pair(baud, latency)
        # host -> agent: the line only; agent -> host: the line, then the adapter's latency timer
        for sender, receiver, hold_ns, push in ((host, agent, 0, False), (agent, host, round(latency * 1e9), True)):
            got = Received(receiver, push)
            writes: list[tuple[int, bytes]] = []  #: (the earliest the far end may have it, bytes)
            line_free = 0
            for _ in range(rng.randint(1, 8)):
                data = rng.randbytes(rng.randint(1, 200))
                start = time.monotonic_ns()  # no later than the model's own notion of "now"
                line_free = max(start, line_free) + wire_ns(len(data), baud)
                writes.append((line_free + hold_ns, data))
                if rng.random() < 0.5:
                    assert sender.write_now(data)
                else:
                    await sender.write(data)
                if rng.random() < 0.4:
                    await asyncio.sleep(rng.random() * 0.003)
            want = b"".join(d for _, d in writes)
            async with asyncio.timeout(5):
                while got.total() < len(want):
                    got.more.clear()
                    await got.more.wait()
            assert b"".join(d for _, d in got.deliveries) == want  # every byte, in order, once
            # each delivery is whole writes, and none came before the last of them could
            pending = list(writes)
            for arrived, data in got.deliveries:
                size = 0
                while size < len(data):
                    earliest, part = pending.pop(0)
                    size += len(part)
                    assert arrived >= earliest, (f"{baud} baud, {latency * 1e3:g} ms: a {len(part)}-byte write arrived "
                                                 f"{(earliest - arrived) / 1e3:.1f} us before the wire allows")
                assert size == len(data), "a delivery split a write"
            if got.task is not None:
                got.task.cancel()
        await host.close()
        await agent.close()


async def test_a_closed_end_reads_the_end_after_what_the_line_still_carries(alarm: str) -> None:
    host, agent = shaped_pair(115_200, 0.001)
    start = time.monotonic_ns()
    await host.write(b"x" * 50)
    await host.close()  # the host hangs up behind its last bytes
    await host.write(b"late")  # nothing follows the end
    assert await agent.read() == b"x" * 50
    assert time.monotonic_ns() - start >= wire_ns(50, 115_200)
    assert await agent.read() == b""
    await asyncio.sleep(0.002)  # time enough for the late bytes, had they gone out
    assert await agent.read() == b""
    await agent.close()


async def test_the_simulated_adapter_costs_what_a_real_ft232h_is_charged() -> None:
    """The simulated line's floor is the real FTDI link's: the latency timer once per exchange
    (it holds the replies only), not once per direction."""
    floor, figures = await bench_shaped(3_000_000, 0.001)
    real = floor_for(open_backend("agent+ftdi://ftdi:232h/1?baud=3000000"))
    assert isinstance(floor, SerialFloor) and (floor.baud, floor.latency) == (3_000_000, 0.001)
    for out, back, trips in ((16, 51, 1), (183, 104, 1), (170, 65_600, 17)):
        assert await floor.minimum(out, back, trips) == await real.minimum(out, back, trips)
    for f in figures:  # the model never beats its own physical minimum
        assert f.minimum is not None and f.bytes_out > 0 and f.bytes_in > 0
        assert f.seconds >= f.minimum, f.line()


async def test_a_figure_is_set_against_the_minimum_of_its_own_run() -> None:
    """Before: the best time was divided by the minimum of the last run's bytes; at 230400 baud a
    64 KiB read whose later runs retransmitted came out at 0.76x its "physical minimum"."""
    stats = SimpleNamespace(round_trips=0, bytes_out=0, bytes_in=0)
    runs = iter([(0.0, 100), (0.05, 9000), (0.05, 9000)])  # the fastest run moves the fewest bytes

    async def run() -> None:
        pause, back = next(runs)
        await asyncio.sleep(pause)
        stats.round_trips += 1
        stats.bytes_out += 10
        stats.bytes_in += back

    floor = SerialFloor(1_000_000, 0.0)
    figure = await shaped._measure(SimpleNamespace(stats=stats), floor, "x", run, repeat=3)  # type: ignore[arg-type]  # only .stats is used
    assert (figure.round_trips, figure.bytes_out, figure.bytes_in) == (1, 10, 100)
    assert figure.minimum == await floor.minimum(10, 100, 1)
