"""``hil demo``: one floppy-style transfer, shown end to end."""

from __future__ import annotations

import argparse
import json

from hil.backends.base import Backend, Capability
from hil.cli.common import add_common, number, with_backend
from hil.errors import HilError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run a floppy-style DMA transfer and show what moved and the registers",
                       description="Program channel 2 with the Linux floppy sequence, let a simulated device "
                                   "send a sector into memory, then print the data, the residue and every register.")
    add_common(p)
    p.add_argument("--bytes", type=number, default=512, help="transfer length (default 512)")
    p.add_argument("--addr", type=number, default=0x23400, help="physical buffer address (default 0x23400)")
    p.set_defaults(func=cmd_demo)


async def cmd_demo(args: argparse.Namespace) -> int:
    from hil.dma import DMA_MODE_READ, IsaDma
    from hil.regs import read_registers
    from hil.sim.devices import Source

    async def body(be: Backend) -> int:
        if Capability.DEVICES not in be.capabilities:
            raise HilError(f"demo needs a backend with simulated devices (sim:), not {be.url}")
        payload = bytes((i * 7 + 1) & 0xFF for i in range(args.bytes))
        source = Source(payload)
        be.machine.attach(2, source)  # type: ignore[attr-defined]
        dma = IsaDma(be)
        await dma.request_dma(2, "floppy")
        async with dma.claim_dma_lock():
            await dma.disable_dma(2)
            await dma.clear_dma_ff(2)
            await dma.set_dma_mode(2, DMA_MODE_READ)
            await dma.set_dma_addr(2, args.addr)
            await dma.set_dma_count(2, args.bytes)
            await dma.enable_dma(2)
        result = await dma.wait_dma_done(2, timeout=1.0)
        await dma.free_dma(2)
        moved = await be.read_mem(args.addr, args.bytes)
        regs = await read_registers(be)
        ok = moved == payload
        if args.json:
            print(json.dumps({"channel": 2, "addr": args.addr, "bytes": args.bytes, "tc": result.tc,
                              "residue": result.residue, "data_ok": ok, "registers": regs.to_json()}))
        else:
            print(f"backend: {be.capabilities.identity}")
            print(f"channel 2, mode 0x{DMA_MODE_READ | 2:02X} (single, I/O->memory), {args.bytes} bytes "
                  f"-> 0x{args.addr:06X}")
            print(f"terminal count: {'yes' if result.tc else 'NO'}; residue {result.residue} bytes; "
                  f"{len(moved)} bytes in memory {'match' if ok else 'DO NOT match'} what the device sent")
            for off in range(0, min(len(moved), 64), 16):
                print(f"  {args.addr + off:06X}: {moved[off:off + 16].hex(' ')}")
            if len(moved) > 64:
                print(f"  ... ({len(moved) - 64} more bytes)")
            print(regs.format())
        return 0 if ok and result.complete else 1

    return await with_backend(args.backend, body)
