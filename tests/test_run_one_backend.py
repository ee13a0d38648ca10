"""``hil run`` opens its backend once (issue 11 item 8).

It used to open one backend to check the scripts and then one more per script. Against an
agent, whose TCP server serves one client at a time, a connection that has not finished closing
made the next one get BUSY. The proxy here keeps the agent side of every connection open after
the host closed its side (a FIN that arrives late, made permanent), so any second connection is
BUSY for certain: the run must pass over exactly one connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
from pathlib import Path

import pytest

from hil import backends
from hil.agent.server import AgentCore, start
from hil.allowlist import AllowList
from hil.backends import BackendURL, open_backend
from hil.backends.sim import SimBackend
from hil.cli import build_parser, main
from hil.dma import IsaDma
from hil.runner import start_fresh

SCRIPT = """
    [script]
    name = "{name}"
    [buffers.b]
    size = 64
    channel = 1
    [[step]]
    op = "write"
    buffer = "b"
    hex = "{hex}"
    [[step]]
    op = "read"
    buffer = "b"
    length = 2
    expect_hex = "{hex}"
    [[step]]
    op = "in"
    port = "dma1.status"
"""


def scripts(tmp_path: Path, n: int = 3) -> list[str]:
    paths = []
    for k in range(n):
        path = tmp_path / f"s{k}.toml"
        path.write_text(textwrap.dedent(SCRIPT.format(name=f"s{k}", hex=f"{k:02x} {k + 1:02x}")), encoding="utf-8")
        paths.append(str(path))
    return paths


class CountingSim(SimBackend):
    """A third-party backend: counts how often ``hil run`` opens one."""

    scheme = "counting"
    opens = 0

    async def _open(self) -> None:
        type(self).opens += 1


def test_hil_run_opens_a_backend_once(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                      tmp_path: Path) -> None:
    """Before: 1 open to check + 1 per script = 4."""
    monkeypatch.setitem(backends._REGISTRY, "counting", lambda url: CountingSim(url.raw))
    monkeypatch.setattr(CountingSim, "opens", 0)
    code = main(["run", "-b", "counting:", *scripts(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert [line.split(":")[0] for line in out.splitlines()[:3]] == ["s0 on counting", "s1 on counting", "s2 on counting"]
    assert CountingSim.opens == 1


async def test_each_later_script_starts_with_fresh_host_state() -> None:
    """What a script claimed and programmed through IsaDma does not carry into the next one on a
    reused backend (the flip-flop, remembered TC bits, the shadow an enable is checked against)."""
    async with SimBackend() as be:
        dma = IsaDma(be)
        await dma.request_dma(3, "first script")
        async with dma.claim_dma_lock():
            await dma.program(3, 0x48, 0x20000, 16, enable=False)
        assert IsaDma(be).shadow().channels[3].phys == 0x20000
        start_fresh(be)
        fresh = IsaDma(be)
        assert fresh.owner_of(3) is None and fresh.shadow().channels[3].phys is None
        await fresh.request_dma(3, "second script")  # not "busy (claimed by 'first script')"


class LingeringProxy:
    """TCP proxy to the agent that never closes the agent side of a connection: to the agent
    the first host is still there, so a second connection is answered BUSY."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.connections = 0
        self._held: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"agent+tcp://{host}:{port}?timeout=0.5&retries=2"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._held.append(up_writer)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, close: bool) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            if close:
                dst.close()

        for task in (asyncio.create_task(pump(reader, up_writer, close=False)),  # the late FIN, never sent
                     asyncio.create_task(pump(up_reader, writer, close=True))):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        self.server.close()
        for w in self._held:
            w.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def test_hil_run_over_an_agent_uses_one_connection(tmp_path: Path) -> None:
    async with open_backend("sim") as io:
        core = AgentCore(io, AllowList.default([range(16 << 20)]))
        listener = await start(core, "tcp://127.0.0.1:0")
        url = BackendURL.parse("agent+" + listener.address)
        proxy = LingeringProxy((url.host, url.port or 0))
        try:
            agent_url = await proxy.start()
            args = build_parser().parse_args(["run", "-q", "-b", agent_url, *scripts(tmp_path)])
            code = await args.func(args)  # before: BUSY at the first script, after the check's connection
            assert code == 0
            assert proxy.connections == 1
        finally:
            await proxy.close()
            listener.close()
