"""Waiting on QEMU's machine: until DMA stops moving (``settle``), until an IRQ line reaches a
level (``wait_irq``). Both run in wall time, because QEMU's devices do: FDC transfers complete
inside the triggering port write, SB16 playback runs at its sample rate."""

from __future__ import annotations

import asyncio
import time

from hil.backends.qtest import QtestClient, fmt_in, parse_int_reply
from hil.errors import SettleTimeout
from hil.ports import DMA1, DMA2

SETTLE_QUIET_S = 0.05  #: settle(): the counts must stay still this long (QEMU's audio timer ticks)
SETTLE_POLL_S = 0.01


async def activity(client: QtestClient) -> tuple[int, ...] | None:
    """Mask registers and every channel's count, read without side effects: QEMU's mask
    reads back at 0x09/0xD2, and each count port is read twice so its flip-flop ends where it
    was. None when every channel of both controllers is masked: nothing can move."""
    lines = [fmt_in(DMA1.request), fmt_in(DMA2.request)]
    for ctrl in (DMA1, DMA2):
        for local in range(4):
            lines += [fmt_in(ctrl.count(local))] * 2
    values = tuple(parse_int_reply(r, q) for q, r in zip(lines, await client.pipeline(lines)))
    if values[0] & 0x0F == 0x0F and values[1] & 0x0F == 0x0F:
        return None
    return values


async def settle_on(client: QtestClient, timeout_s: float | None, url: str) -> None:
    """Return once no count register of ``client``'s machine moves any more; ``url`` names the
    backend in the :class:`~hil.errors.SettleTimeout` (default limit 10 s)."""
    limit = 10.0 if timeout_s is None else timeout_s
    start = time.monotonic()
    snap = await activity(client)
    quiet_since = time.monotonic()
    while snap is not None:
        now = time.monotonic()
        if now - quiet_since >= SETTLE_QUIET_S:
            return
        if now - start >= limit:
            raise SettleTimeout(f"DMA still moving on {url} after {limit:g} s (an autoinit "
                                f"device such as the SB16 never stops by itself; use delay instead)")
        await asyncio.sleep(SETTLE_POLL_S)
        now_snap = await activity(client)
        if now_snap != snap:
            quiet_since = time.monotonic()
        snap = now_snap


async def wait_irq(client: QtestClient, line: int, level: bool = True, timeout: float = 1.0) -> bool:
    """Wait until IOAPIC input ``line`` is at ``level``; False on timeout or when QEMU is gone."""
    deadline = time.monotonic() + timeout
    while client.irq_levels.get(line, False) != level:
        left = deadline - time.monotonic()
        if left <= 0 or not client.alive:
            return False
        # an empty round trip makes QEMU deliver any IRQ line that is already due
        await client.command("endianness\n")
        if client.irq_levels.get(line, False) == level:
            break
        await client.wait_irq_change(min(left, 0.01))
    return True
