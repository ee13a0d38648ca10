"""QEMU's machine protocol (QMP), the little of it a rehearsal needs: pause, resume, reset, quit.

QMP is JSON objects, one per line, on a socket: a greeting, ``qmp_capabilities`` to leave
negotiation mode, then ``{"execute": NAME}`` answered by ``{"return": ...}`` or ``{"error": ...}``,
with asynchronous ``{"event": ...}`` objects in between (docs/reference/vm.md §5). Events are kept
(a test can look for ``RESET`` or ``STOP``), not acted on.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hil.errors import QmpError as QmpError  # importable from here too


class Qmp:
    """One QMP connection; commands are serialised (QMP answers in order)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self._lock = asyncio.Lock()
        self.events: list[dict[str, Any]] = []

    @classmethod
    async def connect(cls, path: str, timeout: float = 10.0) -> Qmp:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), timeout)
        except (OSError, TimeoutError) as e:
            raise QmpError(f"QMP socket {path}: {e or 'timed out'}") from None
        qmp = cls(reader, writer)
        greeting = await qmp._message(timeout)
        if "QMP" not in greeting:
            raise QmpError(f"QMP socket {path}: no greeting ({greeting})")
        await qmp.execute("qmp_capabilities")
        return qmp

    async def _message(self, timeout: float) -> dict[str, Any]:
        try:
            line = await asyncio.wait_for(self._reader.readline(), timeout)
        except TimeoutError:
            raise QmpError(f"QMP: no answer within {timeout} s") from None
        if not line:
            raise QmpError("QMP: QEMU closed the monitor")
        message: dict[str, Any] = json.loads(line)
        return message

    async def execute(self, command: str, timeout: float = 10.0, **arguments: Any) -> Any:
        """Run ``command``; its ``return`` value, or :class:`QmpError` with QEMU's description."""
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        async with self._lock:
            self._writer.write(json.dumps(request).encode() + b"\n")
            await self._writer.drain()
            while True:
                message = await self._message(timeout)
                if "event" in message:
                    self.events.append(message)
                    continue
                if "error" in message:
                    raise QmpError(f"QMP {command}: {message['error'].get('desc', message['error'])}")
                return message.get("return")

    async def status(self) -> str:
        """``running``, ``paused``, ``shutdown``, ... (QMP ``query-status``)."""
        return str((await self.execute("query-status")).get("status", "unknown"))

    async def close(self) -> None:
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except OSError:
            pass
