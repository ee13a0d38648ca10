"""The streams hil talks through op by op (an agent's TCP link, QEMU's qtest socket, a VM's
serial line) receive into a buffer of their own (hil.streams), and a TCP floor is timed with
glibc's malloc thresholds fixed (docs/reference/hil-lessons.md §1.14).

A plain asyncio protocol's transport receives with ``recv(256 KiB)``; depending on the
process's allocation history glibc serves each such buffer with an ``mmap`` and ``munmap`` and
faults its pages in afresh, which more than doubled a one-op round trip. Our protocols are
``BufferedProtocol`` instead; these tests check that the transport really takes that path, that
every byte arrives once, in order and unaliased (the buffer is reused), pushed or read, and that
the thresholds the floor fixes keep such buffers on the heap.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap

import pytest

from hil import streams
from hil.agent.links import PushProtocol, StreamLink, open_link
from hil.bench import heap
from hil.bench.heap import pin_malloc_thresholds
from hil.streams import RECEIVE_BUFFER, BufferedStreamProtocol

CHUNKS = [bytes([i % 251]) * n for i, n in enumerate((1, 7, 300, RECEIVE_BUFFER + 12345, 5, 70_000, 1))]


async def _server(chunks: list[bytes]) -> tuple[asyncio.Server, int, asyncio.Event]:
    """A peer that sends ``chunks`` one at a time, each once the previous one has been taken."""
    go = asyncio.Event()

    async def send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            await go.wait()
            go.clear()
        writer.close()

    server = await asyncio.start_server(send, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], go


async def test_pushed_bytes_come_through_the_links_own_buffer_in_order_and_unaliased(monkeypatch):
    buffers = []
    original = PushProtocol.get_buffer

    def counted(self: PushProtocol, sizehint: int) -> memoryview:
        view = original(self, sizehint)
        buffers.append(view)
        return view

    monkeypatch.setattr(PushProtocol, "get_buffer", counted)
    server, port, go = await _server(CHUNKS)
    link = await open_link(f"tcp://127.0.0.1:{port}")
    assert isinstance(link, StreamLink)
    got: list[bytes] = []
    ended = asyncio.Event()

    def receive(data: bytes) -> None:
        if not data:
            ended.set()
            return
        got.append(data)
        if sum(map(len, got)) in {sum(map(len, CHUNKS[: i + 1])) for i in range(len(CHUNKS))}:
            go.set()  # that chunk is in: the next one overwrites the same buffer

    try:
        assert link.on_data(receive)
        await asyncio.wait_for(ended.wait(), 10)
        assert all(type(d) is bytes for d in got)  # copies: the buffer is filled again below them
        assert b"".join(got) == b"".join(CHUNKS)
        assert len(buffers) >= len(CHUNKS)  # the transport asked the protocol for its buffer on every read
        assert len({id(b.obj) for b in buffers}) == 1  # one buffer, reused
        assert max(map(len, got)) <= RECEIVE_BUFFER
        assert link.stats.bytes_in == sum(map(len, CHUNKS))
    finally:
        await link.close()
        server.close()


async def test_bytes_read_rather_than_pushed_reach_the_stream_reader_whole():
    server, port, go = await _server(CHUNKS)
    link = await open_link(f"tcp://127.0.0.1:{port}")
    got = bytearray()
    try:
        boundaries = {sum(map(len, CHUNKS[: i + 1])) for i in range(len(CHUNKS))}
        while data := await asyncio.wait_for(link.read(), 10):
            got += data
            if len(got) in boundaries:
                go.set()
        assert bytes(got) == b"".join(CHUNKS)
    finally:
        await link.close()
        server.close()


PROBE = textwrap.dedent("""
    import ctypes, resource, sys
    from hil.bench import heap
    libc = ctypes.CDLL(None)

    def faults():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(200):
            buf = bytearray(256 * 1024)  # malloc'd and written, as a 256 KiB receive buffer is
            del buf
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    # the regime a process may be in: the threshold below the buffer, so every one is mmapped
    assert libc.mallopt(heap.M_MMAP_THRESHOLD, 128 * 1024) == 1
    mapped = faults()
    pin = heap.pin_malloc_thresholds()
    print(pin.pinned, mapped, faults())
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux")
def test_fixed_thresholds_keep_a_receive_buffer_on_the_heap():
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "", "MALLOC_TRIM_THRESHOLD_": ""}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, env=env).stdout
    pinned, mapped, kept = out.split()
    assert pinned == "True"
    assert int(mapped) >= 200 * 32  # mmapped: each buffer's 64 pages faulted in afresh
    assert int(kept) < 200  # on the heap: the same pages again


def test_a_c_library_without_glibcs_mallopt_is_left_as_it_is(monkeypatch):
    class Musl:  # no gnu_get_libc_version
        pass

    monkeypatch.setattr(heap.ctypes, "CDLL", lambda name: Musl())
    pin = pin_malloc_thresholds()
    assert not pin.pinned and "not glibc" in pin.detail


def test_a_refused_mallopt_is_said(monkeypatch):
    class Glibc:
        def __init__(self) -> None:
            self.gnu_get_libc_version = lambda: b"2.36"
            self.mallopt = lambda option, value: 0

    monkeypatch.setattr(heap.ctypes, "CDLL", lambda name: Glibc())
    pin = pin_malloc_thresholds()
    assert not pin.pinned and "refused mallopt" in pin.detail and "2.36" in pin.detail


async def test_unix_streams_of_qtest_and_a_vm_line_receive_into_their_own_buffers(monkeypatch, tmp_path):
    """hil.streams' unix server (QEMU's qtest socket) and connection (a VM's serial line): every
    read of both ends goes through the protocol's buffer, and a reply larger than it arrives whole."""
    calls = []
    original = BufferedStreamProtocol.get_buffer

    def counted(self: BufferedStreamProtocol, sizehint: int) -> memoryview:
        calls.append(self)
        return original(self, sizehint)

    monkeypatch.setattr(BufferedStreamProtocol, "get_buffer", counted)
    big = bytes(range(256)) * (RECEIVE_BUFFER // 128)  # two buffers' worth

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        writer.write(line.upper() + big)
        await writer.drain()
        writer.close()

    path = str(tmp_path / "s.sock")
    server = await streams.start_unix_server(answer, path, limit=1 << 20)
    try:
        reader, writer = await streams.open_unix_connection(path, limit=1 << 20)
        writer.write(b"inb 0x83\n")
        assert await asyncio.wait_for(reader.readline(), 10) == b"INB 0X83\n"
        assert await asyncio.wait_for(reader.readexactly(len(big)), 10) == big
        writer.close()
    finally:
        server.close()
    ends = {id(p) for p in calls}
    assert len(ends) == 2 and len(calls) >= 4  # the server's end and ours; the reply took several reads
