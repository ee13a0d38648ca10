"""``hil bench link``: agent link figures against the physical minimum of the link in use."""

from __future__ import annotations

import argparse
import contextlib
import json
from typing import TYPE_CHECKING

from hil.backends import open_backend
from hil.errors import HilError

if TYPE_CHECKING:
    from hil.bench.cpulatency import CpuLatency

SIM_BAUD, SIM_LATENCY_MS = 3_000_000, 1.0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench",
                       description="Measure channel programming, a register dump and a 64 KiB read through an "
                                   "agent link, as ratios to the physical minimum of the link in use: a serial "
                                   "line's baud rate and latency timer, TCP's loopback echo measured in the same "
                                   "run, none for a pty. Without --backend the link is simulated (--baud, "
                                   "--latency-ms) and raw ops/s over a pty are measured too.")
    p.add_argument("what", choices=("link",), help="what to measure: link (the agent link)")
    p.add_argument("--backend", "-b", metavar="URL",
                   help="a real agent+... link to measure instead of the simulated one; its baud rate is the URL's "
                        "?baud=")
    p.add_argument("--baud", type=int, metavar="N",
                   help=f"baud rate of the simulated link (default {SIM_BAUD}; not with --backend)")
    p.add_argument("--latency-ms", type=float, metavar="MS",
                   help=f"latency timer of the simulated FT232H, which holds what the agent sends that long "
                        f"(default {SIM_LATENCY_MS:g}; the host's bytes are not held; not with --backend)")
    p.add_argument("--cpu-idle", choices=("hold", "leave"), default="hold",
                   help="hold (default): keep the CPUs out of deep idle states while timing, through Linux's CPU "
                        "latency QoS (/dev/cpu_dma_latency, root), so waking from them is not counted as link "
                        "time; leave: time with the idle states as they are")
    p.add_argument("--log-format", choices=("console", "json"), default="console",
                   help="structlog output format on stderr")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.set_defaults(func=cmd_bench)


async def cmd_bench(args: argparse.Namespace) -> int:
    from hil.bench.cpulatency import CpuLatency, hold_cpu_latency

    with (hold_cpu_latency() if args.cpu_idle == "hold"
          else contextlib.nullcontext(CpuLatency(False, "CPU idle states as they are (--cpu-idle leave)"))) as cpu:
        return await _bench(args, cpu)


async def _bench(args: argparse.Namespace, cpu: CpuLatency) -> int:
    from hil.agent.client import AgentBackend
    from hil.bench.link import bench_backend, bench_pty, bench_shaped, floor_for

    if args.backend:
        if args.baud is not None or args.latency_ms is not None:
            raise HilError("--baud and --latency-ms shape the simulated link; a real link's baud rate is its "
                           "URL's ?baud=, its latency is measured")
        async with open_backend(args.backend) as be:
            if not isinstance(be, AgentBackend):
                raise HilError(f"{args.backend}: not an agent+... link (hil bench link measures agent links)")
            floor = floor_for(be)
            description = floor.description
            figures = await bench_backend(be, floor)
            boot_s = getattr(be, "boot_s", None)  # vm: QEMU's start to the first HELLO
        single = batched = None
        link = args.backend
    else:
        baud = SIM_BAUD if args.baud is None else args.baud
        latency_ms = SIM_LATENCY_MS if args.latency_ms is None else args.latency_ms
        if baud <= 0 or latency_ms < 0:
            raise HilError("--baud must be > 0 and --latency-ms >= 0")
        floor, figures = await bench_shaped(baud, latency_ms / 1e3)
        description = floor.description
        single, batched = await bench_pty()
        link = "simulated"
        boot_s = None
    if args.json:
        print(json.dumps({"link": link, "minimum": description, "figures": [f.to_json() for f in figures],
                          "pty_programs_per_s": single, "pty_ops_per_s": batched, "boot_s": boot_s,
                          "cpu_latency_held": cpu.held, "cpu": cpu.detail}))
        return 0
    print(f"link: {link}")
    print(f"minimum: {description}")
    print(f"cpu: {cpu.detail}")
    if boot_s is not None:
        print(f"  boot: {boot_s:.2f} s from starting the VM to the agent's HELLO")
    for f in figures:
        print("  " + f.line())
    if single is not None:
        print(f"  pty, no shaping: {single:,.0f} one-op programs/s; {batched:,.0f} ops/s in 100-op programs")
    return 0
