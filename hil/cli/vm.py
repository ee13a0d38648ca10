"""``hil vm``: the rehearsal VM's kernel, image, and commands run inside it (``vm:`` backend)."""

from __future__ import annotations

import argparse
import asyncio
import json

from hil.cli.common import add_common
from hil.errors import HilError

CAPABILITIES = {"CAP_SYS_RAWIO": 17}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vm", help="the vm: backend's Linux VM: fetch its kernel, build its image, run commands in it",
                       description="fetch-kernel: Debian's linux-image-amd64 kernel into the cache, without installing "
                                   "it. image: build (or find cached) the guest image from this host's Python and "
                                   "package. run: boot a VM and run a command inside it as root, e.g. "
                                   "`hil vm run -- hil doctor devport:?window=0x10000-0x90000`.")
    p.add_argument("what", choices=("fetch-kernel", "kernel", "image", "run"),
                   help="fetch-kernel: Debian's kernel into the cache; kernel: the one vm: would boot; image: the guest image; "
                        "run: boot and run COMMAND")
    p.add_argument("guest_argv", nargs=argparse.REMAINDER, metavar="COMMAND",
                   help="run: the command (a leading 'hil' runs the guest's hil)")
    p.add_argument("--url", default="vm:", metavar="URL",
                   help="run: the VM's options as a vm: URL (window=, reserve=0, floppy=, mem=, kernel=)")
    p.add_argument("--drop-cap", action="append", default=[], choices=sorted(CAPABILITIES),
                   help="run: remove a capability from the command's bounding set (repeatable)")
    p.add_argument("--force", action="store_true", help="image: rebuild even if cached")
    add_common(p, backend=False)
    p.set_defaults(func=cmd_vm)


async def cmd_vm(args: argparse.Namespace) -> int:
    from hil.vm import image, kernel

    match args.what:
        case "fetch-kernel":
            path = await asyncio.to_thread(kernel.fetch_debian_kernel)
            print(json.dumps({"kernel": str(path)}) if args.json else path)
            return 0
        case "kernel":
            path = kernel.find_kernel()
            print(json.dumps({"kernel": str(path)}) if args.json else path)
            return 0
        case "image":
            img = await asyncio.to_thread(image.build, None, force=args.force)
            if args.json:
                print(json.dumps({"image": str(img.path), "size": img.size, "built": img.built}))
            else:
                print(f"{img.path} ({img.size / 1e6:.1f} MB, {'built' if img.built else 'cached'})")
            return 0
        case _:
            return await _run(args)


async def _run(args: argparse.Namespace) -> int:
    from hil.backends import BackendURL
    from hil.vm.backend import parse_config, run_commands

    argv = args.guest_argv[1:] if args.guest_argv[:1] == ["--"] else list(args.guest_argv)
    if not argv:
        raise HilError("hil vm run: give the command to run in the guest, e.g. hil vm run -- hil doctor devport:")
    results = await run_commands(parse_config(BackendURL.parse(args.url)),
                                 [{"argv": argv, "drop_caps": [CAPABILITIES[c] for c in args.drop_cap]}])
    result = results[0]
    if args.json:
        print(json.dumps({"rc": result.rc, "stdout": result.stdout, "stderr": result.stderr, "seconds": result.seconds}))
    else:
        print(result.stdout, end="")
        if result.stderr:
            print(result.stderr, end="")
    return result.rc
