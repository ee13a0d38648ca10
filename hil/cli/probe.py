"""``hil probe URL``: what DMA hardware a target has (:mod:`hil.probe` makes the findings)."""

from __future__ import annotations

import argparse
import json

from hil.backends.base import Backend
from hil.cli.common import add_common, with_backend


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe",
                       description="Probe a backend URL for ISA/LPC DMA hardware and print one line per finding "
                                   "with the port accesses it rests on. Read-only by default: the 8237 (page "
                                   "register 0x87, the Linux rule), its mask read-back, the channels' address, count "
                                   "and page registers, the floppy controller's MSR, the parallel ports' CTR and "
                                   "ECR. --active also runs the tests that write: FDC VERSION, Linux's ECR-present "
                                   "test (CTR and ECR restored), the SB16 DSP reset, the Super I/O entry keys at "
                                   "0x2E/0x4E (always exited). Ports outside the backend's allow-list are reported "
                                   "as not checked. Exit status: 0 an 8237 answers, 1 no 8237 (ISA DMA cannot work "
                                   "there), 2 an error.")
    p.add_argument("url", nargs="?", default="sim", metavar="URL", help="backend URL (default: sim)")
    p.add_argument("--active", action="store_true",
                   help="also run the tests that write to the hardware (FDC VERSION, ECR test, DSP reset, "
                        "Super I/O configuration ports); each restores what it changes")
    add_common(p, backend=False)
    # a probe reads where nothing may answer on purpose, and its findings say what floated: the
    # backends' warnings about undecoded ports would only repeat that, so they show with -v
    p.set_defaults(func=cmd_probe, log_offset=-1)


async def cmd_probe(args: argparse.Namespace) -> int:
    from hil.probe import probe

    async def body(be: Backend) -> int:
        report = await probe(be, active=args.active)
        print(json.dumps(report.to_json()) if args.json else report.format())
        return report.exit_code

    return await with_backend(args.url, body)
