"""``agent+rfc2217://``: the agent link through an RFC 2217 port server (ser2net, as a labgrid
exporter runs it: docs/reference/labgrid.md §4).

pyserial's RFC 2217 client refuses a write timeout when it opens, which the link opened with
(it never got as far as a connection), and its open waits for the server's answers: it must not
hold the event loop meanwhile. The server here is pyserial's own server-side state machine
(``serial.rfc2217.PortManager``) over a ``loop://`` port, so whatever the link writes comes back,
telnet-escaped on the way (byte 0xFF included).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest
import serial
import serial.rfc2217

from hil.agent.links import open_link


@pytest.fixture
def rfc2217_server() -> Iterator[int]:
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        conn.settimeout(0.05)
        port = serial.serial_for_url("loop://", timeout=0.05)

        class Network:  # what PortManager writes its telnet answers to
            write = conn.sendall

        manager = serial.rfc2217.PortManager(port, Network())
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                data = conn.recv(4096)
                if not data:
                    break
                port.write(b"".join(manager.filter(data)))
            echoed = port.read(port.in_waiting or 1)
            if echoed:
                conn.sendall(b"".join(manager.escape(echoed)))
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    listener.close()
    thread.join(5)


async def test_an_rfc2217_link_opens_and_carries_every_byte_value(rfc2217_server: int) -> None:
    ticks = 0

    async def tick() -> None:  # the loop keeps running while the link opens
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    link = await open_link(f"rfc2217://127.0.0.1:{rfc2217_server}?ign_set_control")
    ticker.cancel()
    try:
        assert ticks > 0
        payload = bytes(range(256))
        await link.write(payload)
        got = b""
        async with asyncio.timeout(10):
            while len(got) < len(payload):
                got += await link.read()
        assert got == payload
    finally:
        await link.close()
