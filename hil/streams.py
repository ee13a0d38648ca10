"""asyncio streams whose transport receives into the protocol's own buffer.

Why: a plain streams connection's transport receives every read with ``recv(256 KiB)``, and
whether glibc serves that allocation from the heap or with an ``mmap``, fresh pages to fault in
and an ``munmap`` depends on the process's allocation history. In the second regime a one-op
round trip of an agent over TCP took 90 us instead of 50 (docs/reference/hil-lessons.md §1.14).
Every stream hil opens to a peer it talks to op by op (an agent over TCP, QEMU's qtest socket,
a VM's serial line) comes from here, with asyncio's ``BufferedProtocol``: the transport calls
``recv_into`` this protocol's buffer, allocated once per connection. The functions are
asyncio's own of the same names with that protocol in place of its ``StreamReaderProtocol``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

RECEIVE_BUFFER = 256 * 1024  #: what one read may take: the size asyncio's transport asks recv() for

ConnectedCallback = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]
P = TypeVar("P", bound="BufferedStreamProtocol")


class BufferedStreamProtocol(asyncio.StreamReaderProtocol, asyncio.BufferedProtocol):
    """A :class:`asyncio.StreamReaderProtocol` that receives into one buffer of its own."""

    _view: memoryview | None = None

    def get_buffer(self, sizehint: int) -> memoryview:
        view = self._view
        if view is None:
            view = self._view = memoryview(bytearray(RECEIVE_BUFFER))
        return view

    def buffer_updated(self, nbytes: int) -> None:
        assert self._view is not None  # get_buffer() came first
        self.data_received(bytes(self._view[:nbytes]))  # a copy: the reader keeps what it is given


async def open_connection(host: str, port: int, *, limit: int, protocol: Callable[[asyncio.StreamReader], P],
                          ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, P]:
    """:func:`asyncio.open_connection` with the protocol ``protocol`` makes from the reader (a
    subclass of ours), which it also returns."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    proto = protocol(reader)
    transport, _ = await loop.create_connection(lambda: proto, host, port)
    return reader, asyncio.StreamWriter(transport, proto, reader, loop), proto


async def open_unix_connection(path: str, *, limit: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """:func:`asyncio.open_unix_connection`."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    proto = BufferedStreamProtocol(reader, loop=loop)
    transport, _ = await loop.create_unix_connection(lambda: proto, path)
    return reader, asyncio.StreamWriter(transport, proto, reader, loop)


async def start_unix_server(connected: ConnectedCallback, path: str, *, limit: int) -> asyncio.Server:
    """:func:`asyncio.start_unix_server`."""
    loop = asyncio.get_running_loop()

    def factory() -> BufferedStreamProtocol:
        return BufferedStreamProtocol(asyncio.StreamReader(limit=limit, loop=loop), connected, loop=loop)

    return await loop.create_unix_server(factory, path)
