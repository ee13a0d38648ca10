"""``hil demo``: one floppy-style transfer, shown end to end.

The simulated drive is attached with the device operations of an ``execute()`` program
(:class:`~hil.ops.DevAttach`, :class:`~hil.ops.DevState`), never through a
backend's internals, so the demo runs on every backend with the ``devices`` capability: the
in-process simulator and an agent serving one (``hil agent --io sim``) alike.
"""

from __future__ import annotations

import argparse
import json

from hil.backends.base import Backend, Capability
from hil.cli.common import add_common, number, with_backend
from hil.errors import HilError
from hil.ops import DevAttach, DeviceState, DevState

CHANNEL = 2  #: the floppy's channel on a PC (docs/reference/linux-isa-dma.md §2)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo",
                       description="Program channel 2 with the Linux floppy sequence, let a simulated device "
                                   "send a sector into memory, then print the data, the residue and every register. "
                                   "Needs a backend with the 'devices' capability: sim (the default) or an agent "
                                   "serving one (hil agent --io sim). Exit status: 0 the data arrived and the "
                                   "residue is 0, 1 it did not.")
    add_common(p)
    p.add_argument("--bytes", type=number, default=512, metavar="N",
                   help="transfer length in bytes, 1..65536 (default 512, one sector)")
    p.add_argument("--addr", type=number, default=0x23400, metavar="PHYS",
                   help="physical address of the buffer, below 16 MiB and not crossing a 64 KiB boundary "
                        "(default 0x23400)")
    p.set_defaults(func=cmd_demo)


async def cmd_demo(args: argparse.Namespace) -> int:
    from hil.dma import DMA_MODE_READ, IsaDma
    from hil.regs import hex_value, read_registers

    async def body(be: Backend) -> int:
        caps = be.capabilities
        if Capability.DEVICES not in caps:
            have = ", ".join(sorted(c.value for c in caps.features)) or "none"
            raise HilError(f"backend {be.url} lacks capability 'devices' (it has: {have}); the demo needs a "
                           f"simulated drive: use sim: or an agent serving one (hil agent --io sim)")
        if not 1 <= args.bytes <= 0x10000:
            raise HilError(f"--bytes {args.bytes}: channel {CHANNEL} moves 1..65536 bytes")
        payload = bytes((i * 7 + 1) & 0xFF for i in range(args.bytes))
        await be.execute([DevAttach(CHANNEL, "source", payload)])
        dma = IsaDma(be)
        await dma.request_dma(CHANNEL, "floppy")
        try:
            async with dma.claim_dma_lock():
                await dma.disable_dma(CHANNEL)
                await dma.clear_dma_ff(CHANNEL)
                await dma.set_dma_mode(CHANNEL, DMA_MODE_READ)
                await dma.set_dma_addr(CHANNEL, args.addr)
                await dma.set_dma_count(CHANNEL, args.bytes)
                await dma.enable_dma(CHANNEL)
            result = await dma.wait_dma_done(CHANNEL, timeout=1.0, check=False)
        finally:
            await dma.free_dma(CHANNEL)  # wait_dma_done masked the channel: free_dma after disable
        moved = await be.read_mem(args.addr, args.bytes)
        device, = await be.execute([DevState(CHANNEL, 0)])
        assert isinstance(device, DeviceState)
        regs = await read_registers(be)
        ok = moved == payload
        if args.json:
            print(json.dumps({"backend": caps.identity, "channel": CHANNEL, "addr": args.addr, "bytes": args.bytes,
                              "tc": result.tc, "residue": result.residue, "device_sent": device.moved,
                              "data_ok": ok, "registers": regs.to_json()}))
        else:
            mode = DMA_MODE_READ | CHANNEL
            print(f"backend: {caps.identity}")
            print(f"channel {CHANNEL}, mode {hex_value(mode)} (single, I/O->memory), {args.bytes} bytes "
                  f"-> 0x{args.addr:06X}")
            print(f"terminal count: {'yes' if result.tc else 'NO'}; residue {result.residue} bytes; "
                  f"{len(moved)} bytes in memory {'match' if ok else 'DO NOT match'} what the device sent "
                  f"(it sent {device.moved} of {len(payload)})")
            for off in range(0, min(len(moved), 64), 16):
                print(f"  0x{args.addr + off:06X}: {moved[off:off + 16].hex(' ').upper()}")
            if len(moved) > 64:
                print(f"  ... ({len(moved) - 64} more bytes)")
            print(regs.format())
        return 0 if ok and result.complete else 1

    return await with_backend(args.backend, body)
