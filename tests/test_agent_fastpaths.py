"""The agent link's fast paths against its general paths (issue 16): the direct write beside the
writer task, a round trip's timeout without ``asyncio.wait``, and the caches of prepared
programs at both ends. Each fast path must give what the general path gives."""

from __future__ import annotations

import asyncio
import random

from hil.agent.client import AgentBackend, LinkStatistics, _Wire
from hil.agent.links import Link
from hil.agent.server import AgentCore, serve_link
from hil.allowlist import AllowList
from hil.backends import open_backend
from hil.ops import In, MemRead, MemWrite, Out


class Recorder(Link):
    """A link whose ``write_now`` takes a write at random (else the writer task's ``write``,
    which waits a loop turn or two): what reaches the line must be the order of ``send``."""

    def __init__(self, seed: int) -> None:
        super().__init__("recorder")
        self.rng = random.Random(seed)
        self.line: list[bytes] = []
        self.direct = self.queued = 0
        self._closed = asyncio.Event()

    def write_now(self, data: bytes) -> bool:
        if self.rng.random() < 0.5:
            return False
        self.line.append(data)
        self.direct += 1
        return True

    async def write(self, data: bytes) -> None:
        for _ in range(self.rng.randrange(3)):
            await asyncio.sleep(0)
        self.line.append(data)
        self.queued += 1

    async def read(self) -> bytes:
        await self._closed.wait()
        return b""

    async def close(self) -> None:
        self._closed.set()


async def test_direct_and_queued_writes_keep_the_order_of_send():
    direct = queued = 0
    for seed in range(20):
        link = Recorder(seed)
        wire = _Wire(link, lambda frame: None, lambda exc: None, LinkStatistics(), "t")
        frames = [bytes([i]) * (i + 1) for i in range(40)]
        senders = []
        for i, frame in enumerate(frames):  # bursts of concurrent senders between loop turns
            senders.append(asyncio.create_task(wire.send(frame)))
            if i % 5 == 4:
                await asyncio.sleep(0)
        await asyncio.gather(*senders)
        await wire.close()
        assert link.line == frames, seed
        direct, queued = direct + link.direct, queued + link.queued
    assert direct > 10 and queued > 10  # both paths were taken, often


class Pipe(Link):
    """One end of an in-memory link; ``hold`` delays the next write by that many seconds."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.rx: asyncio.Queue[bytes] = asyncio.Queue()
        self.peer: Pipe | None = None
        self.hold = 0.0

    async def read(self) -> bytes:
        return await self.rx.get()

    async def write(self, data: bytes) -> None:
        assert self.peer is not None
        if self.hold:
            hold, self.hold = self.hold, 0.0
            asyncio.get_running_loop().call_later(hold, self.peer.rx.put_nowait, data)
            return
        self.peer.rx.put_nowait(data)

    async def close(self) -> None:
        assert self.peer is not None
        self.peer.rx.put_nowait(b"")


async def test_a_reply_later_than_the_timeout_is_taken_and_the_program_ran_once():
    host, agent = Pipe("host"), Pipe("agent")
    host.peer, agent.peer = agent, host
    async with open_backend("sim") as io:
        core = AgentCore(io, AllowList.default([range(0, 1 << 24)]))
        server = asyncio.create_task(serve_link(core, agent))
        be = AgentBackend("agent+test", "pipe", timeout=0.2, retries=3, link_factory=lambda: _ready(host))
        try:
            await be.open()
            await be.execute([Out(0x81, 0x12)])
            executed = core.stats.executed
            agent.hold = 0.3  # the reply to the next program arrives after the first timeout
            assert await be.execute([Out(0x81, 0x34), In(0x81)]) == [0x34]
            assert be.stats.retries >= 1
            assert core.stats.executed == executed + 1  # the retransmission was answered from the cache
            assert await be.execute([MemWrite(0x1000, b"abc"), MemRead(0x1000, 3)]) == [b"abc"]
        finally:
            await be.close()
            server.cancel()


async def _ready(link: Link) -> Link:
    return link
