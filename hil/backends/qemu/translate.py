"""A program for the ``qemu:`` backend: checked whole before anything is sent, then translated
into qtest commands and pipelined (docs/reference/qemu-qtest.md §3).

Port and memory operations become ``outb``/``inb``/``b64write``/``b64read``/``memset`` lines,
sent in pipelined batches; ``Delay``, ``Poll``, ``Settle`` and ``WaitIrq`` flush the batch and
wait on the host; ``IrqState`` flushes it and answers from the IRQ events qtest reported (they
arrive before the replies of the commands that caused them, docs/reference/qemu-qtest.md §3.2).
The simulator's device operations are refused: QEMU has its own devices.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from hil.allowlist import AllowList
from hil.backends.qemu.config import QemuConfig
from hil.backends.qemu.settle import settle_on, wait_irq
from hil.backends.qtest import (
    MEM_CHUNK,
    QtestClient,
    fmt_b64read,
    fmt_b64write,
    fmt_in,
    fmt_memset,
    fmt_out,
    parse_b64_reply,
    parse_int_reply,
)
from hil.errors import AccessDeniedError, MemoryRangeError, UnsupportedOperationError, WideAccessError
from hil.ops import (
    DEVICE_OPS,
    IRQ_LINES,
    Delay,
    In,
    IrqLines,
    IrqState,
    MemFill,
    MemRead,
    MemWrite,
    Op,
    Out,
    Poll,
    Result,
    Settle,
    WaitIrq,
    is_device_op,
    memory_access,
    port_access,
)
from hil.ports import DMA_PORT_RANGES

#: ports that reset or stop the emulated PC: keyboard controller (0xFE = reset), port 92 (fast
#: reset), PIIX reset control. Refused whatever the allow-list says.
FORBIDDEN_PORTS = frozenset({0x64, 0x92, 0xCF9})
#: ports a word access must not touch: QEMU would not split it the way an ISA bus does
BYTE_ONLY_PORTS: tuple[range, ...] = DMA_PORT_RANGES

#: the operations QEMU runs: port I/O, memory, delay, poll, settle and the IRQ lines; the
#: simulator's device operations cannot run here (QEMU has its own devices)
SIM_DEVICE_OPS: tuple[type, ...] = DEVICE_OPS
RUNNABLE_OPS: tuple[type, ...] = (Out, In, MemWrite, MemRead, MemFill, Delay, Poll, Settle, IrqState, WaitIrq)


def ports_text(allowlist: AllowList) -> str:
    """The allow-list's port ranges as a refusal names them."""
    return ", ".join(f"0x{r.start:X}-0x{r.stop - 1:X}" for r in allowlist.ports)


def check_program(ops: Sequence[Op], config: QemuConfig, allowlist: AllowList) -> None:
    """Refuse the whole program before anything is sent (docs/reference/qemu-qtest.md §3.3, §3.5):
    the backend's own refusals, after :meth:`Backend.check <hil.backends.base.Backend.check>`'s."""
    mem = config.mem
    for op in ops:
        if is_device_op(op):
            raise UnsupportedOperationError(f"{type(op).__name__}: the qemu backend has QEMU's own devices "
                                            f"(FDC, SB16), not the simulator's (capability 'devices')")
        if not isinstance(op, RUNNABLE_OPS):
            raise UnsupportedOperationError(f"the qemu backend cannot run {type(op).__name__}")
        if (io := port_access(op)) is not None:
            port, width = io.port, io.width
            if width == 16 and not config.wide and any(p in r for r in BYTE_ONLY_PORTS for p in (port, port + 1)):
                raise WideAccessError(port, width, io.write, "byte-wide only", message=(
                    f"16-bit access to port 0x{port:04X}: the qemu backend accesses the DMA and page "
                    f"ports byte-wide only (QEMU hands a word access to the owner of the first port, "
                    f"docs/reference/qemu-qtest.md §3.5); use two 8-bit accesses, or qemu:?wide=pass"))
            if io.write and FORBIDDEN_PORTS & {port, io.last}:
                raise AccessDeniedError(f"write to port 0x{port:04X} refused: it resets or stops the "
                                        f"emulated PC")
            if not allowlist.port_allowed(port, width):
                verb = "write to" if io.write else "read of"
                raise AccessDeniedError(
                    f"{verb} port 0x{port:04X} ({width}-bit) refused: outside the qemu backend's "
                    f"allow-list ({ports_text(allowlist)}); attach the device (floppy=, sb16=1) or add "
                    f"the ports with qemu:?allow=0xLO-0xHI")
        if (area := memory_access(op)) is not None and area.addr + area.length > mem:
            raise MemoryRangeError(area.addr, area.length, mem, "the QEMU guest's RAM")


async def run_program(client: QtestClient, ops: Sequence[Op], url: str) -> list[Result]:
    """Run ``ops`` on ``client``: one result per reading op, in order (``url`` names the backend
    in a settle timeout)."""
    results: list[Result] = []
    lines: list[str] = []
    #: per line: None (no result), (slot, None) for an In, (slot, n) for n bytes of a MemRead
    handlers: list[tuple[int, int | None] | None] = []

    async def flush() -> None:
        if not lines:
            return
        replies = await client.pipeline(lines)
        for line, reply, handler in zip(lines, replies, handlers):
            if handler is None:
                continue
            slot, length = handler
            if length is None:
                results[slot] = parse_int_reply(reply, line)
            else:
                so_far = results[slot]
                assert isinstance(so_far, bytes)  # a MemRead's slot holds the bytes read so far
                results[slot] = so_far + parse_b64_reply(reply, line, length)
        lines.clear()
        handlers.clear()

    for op in ops:
        match op:
            case Out():
                lines.append(fmt_out(op.port, op.value, op.width))
                handlers.append(None)
            case In():
                results.append(0)
                lines.append(fmt_in(op.port, op.width))
                handlers.append((len(results) - 1, None))
            case MemWrite():
                data = bytes(op.data)
                for off in range(0, len(data), MEM_CHUNK):
                    lines.append(fmt_b64write(op.addr + off, data[off : off + MEM_CHUNK]))
                    handlers.append(None)
            case MemRead():
                results.append(b"")
                slot = len(results) - 1
                for off in range(0, op.length, MEM_CHUNK):
                    n = min(MEM_CHUNK, op.length - off)
                    lines.append(fmt_b64read(op.addr + off, n))
                    handlers.append((slot, n))
            case MemFill():
                if op.length:
                    lines.append(fmt_memset(op.addr, op.length, op.value))
                    handlers.append(None)
            case Delay():
                await flush()
                await asyncio.sleep(op.us / 1e6)
            case Poll():
                await flush()
                results.append(await poll(client, op))
            case Settle():
                await flush()
                await settle_on(client, op.timeout_us / 1e6, url)
            case IrqState():
                await flush()
                results.append(irq_lines(client))
            case WaitIrq():
                await flush()
                await wait_irq(client, op.line, op.level, op.timeout_us / 1e6)
                results.append(irq_lines(client))
    await flush()
    return results


def irq_lines(client: QtestClient) -> IrqLines:
    """IOAPIC inputs 0-15 (the ISA lines) as qtest last reported them; counts since QEMU started."""
    levels = sum(1 << n for n in range(IRQ_LINES) if client.irq_levels.get(n, False))
    return IrqLines(levels, tuple(client.irq_raises[n] for n in range(IRQ_LINES)))


async def poll(client: QtestClient, op: Poll) -> int:
    """Read ``op.port`` until ``value & mask == expect`` or the timeout; the last value read."""
    deadline = time.monotonic() + op.timeout_us / 1e6
    request = fmt_in(op.port, op.width)
    while True:
        value = parse_int_reply(await client.command(request), request)
        if value & op.mask == op.expect or time.monotonic() >= deadline:
            return value
        await asyncio.sleep(op.interval_us / 1e6)
