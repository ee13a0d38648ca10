"""``vm:`` backend: a bench rehearsed in a Linux VM — QEMU's PC, a real kernel, and inside it
``hil agent --io devport`` on the VM's first UART.

Everything between a transfer script and QEMU's i8257 is then what it is on a board: the agent
protocol over a 16550 (QEMU's model, through a chardev socket on this side), the agent on a real
kernel's ``/dev/port`` and a ``memmap=``-reserved ``/dev/mem`` window, that kernel's capability,
lockdown and ``STRICT_DEVMEM`` rules (docs/reference/vm.md). Only the agent line is a UART; the
host side is the ordinary agent backend, so capabilities, retries and reset detection are the
agent's (plus ``fdc`` with ``floppy=``, ``sb16`` with ``sb16=1``, which the guest's devport
declares present).

URL options (``vm:?floppy=generate&baud=115200``):

=============== ================================================================================
``kernel``      bzImage to boot (default ``$HIL_VM_KERNEL``, else the cached Debian kernel;
                ``hil vm fetch-kernel``)
``mem``         guest RAM (default ``128M``; 64M is enough for the agent)
``baud``        the guest agent's line rate on ``ttyS0`` (default 115200, the 16550's top rate)
``floppy``      ``generate`` or an image path: drive A on QEMU's FDC, ports 0x3F0-0x3F7 allowed
``sb16``        ``1``: QEMU's Sound Blaster 16 at 220h (DMA 1/5, IRQ 5), its ports allowed
``window``      the DMA window ``START-END`` (default ``0x10000-0x90000``, as a board's devport)
``reserve``     ``1`` (default): reserve the window with ``memmap=``; ``0`` leaves it System RAM
``accel``       ``auto`` (KVM when it boots a kernel here, else TCG), ``kvm`` or ``tcg``
``link``        ``serial`` (the only one: the agent's line is the VM's UART)
``timeout``     seconds per round trip before the agent backend retries (default 2)
``retries``     retries per frame (default 8)
``boot_timeout`` seconds from QEMU's start to the agent's HELLO (default 120)
``binary``      ``qemu-system-x86_64`` to use
=============== ================================================================================
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from hil import streams
from hil.agent.client import AgentBackend
from hil.agent.links import Link, StreamLink
from hil.allowlist import AllowListError, parse_window
from hil.backends import BackendURL
from hil.backends.base import DEVICE_PORTS, Capabilities, Capability
from hil.errors import BackendOptionError, LinkError, VmBootError
from hil.log import get_logger
from hil.records import dataclass
from hil.vm import image, kernel
from hil.vm.instance import CommandResult, MachineSpec, VirtualMachine, run_in_guest

log = get_logger("hil.vm")

OPTIONS = {
    "kernel": "bzImage to boot (default $HIL_VM_KERNEL, else the cached Debian kernel)",
    "mem": "guest RAM, e.g. 128M",
    "baud": "the guest agent's UART rate (default 115200)",
    "floppy": "generate|PATH, drive A on QEMU's FDC",
    "sb16": "0|1, QEMU's Sound Blaster 16",
    "window": "DMA window START-END (default 0x10000-0x90000)",
    "reserve": "0|1, reserve the window with memmap= (default 1)",
    "accel": "auto|kvm|tcg",
    "link": "serial",
    "timeout": "seconds per round trip before a retry (default 2)",
    "retries": "retries per frame (default 8)",
    "boot_timeout": "seconds to the agent's HELLO (default 120)",
    "binary": "path of qemu-system-x86_64",
}
BAUDS = (50, 75, 110, 134, 150, 200, 300, 600, 1200, 1800, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
GUEST_ALLOW = "/etc/hil/allow.toml"
READY = "\n/dev/ttyS0"  #: the line the guest's agent prints on its console once its UART is open


@dataclass(frozen=True)
class VmConfig:
    kernel: str | None = None
    mem_mib: int = 128
    baud: int = 115200
    floppy: str | None = None
    sb16: bool = False
    window: range = range(0x10000, 0x90000)
    reserve: bool = True
    accel: str = "auto"
    timeout: float = 2.0
    retries: int = 8
    boot_timeout: float = 120.0
    binary: str | None = None

    def devices(self) -> list[Capability]:
        return [c for c, on in ((Capability.FDC, bool(self.floppy)), (Capability.SB16, self.sb16)) if on]

    def devport_url(self) -> str:
        """The guest agent's I/O: the kernel's own devices, the window, the declared ISA devices."""
        url = f"devport:?window=0x{self.window.start:X}-0x{self.window.stop:X}&allow={GUEST_ALLOW}"
        devices = self.devices()  # declared present, and their IRQ lines observed through the 8259s
        return url + (f"&devices={','.join(c.value for c in devices)}&irq=pic" if devices else "")

    def allow_toml(self) -> str:
        """The guest's allow-list: DMA controllers and pages, the declared devices' ports, the window."""
        extra = [f'"0x{DEVICE_PORTS[c].start:X}-0x{DEVICE_PORTS[c].stop - 1:X}"' for c in self.devices()]
        return (f"[ports]\ndma = true\nextra = [{', '.join(extra)}]\n\n"
                f"[memory]\nwindows = [\"0x{self.window.start:X}-0x{self.window.stop:X}\"]\n")

    def agent_argv(self) -> list[str]:
        return ["--io", self.devport_url(), "--listen", f"serial:///dev/ttyS0?baud={self.baud}", "--allow", GUEST_ALLOW,
                "--name", "hil-vm-agent", "--idle-timeout", "3600"]


def parse_config(url: BackendURL) -> VmConfig:
    from hil.backends.sim import parse_size

    if url.host or url.port is not None or url.path.strip("/"):
        raise BackendOptionError(url.raw, "vm: takes options only, e.g. vm:?floppy=generate")
    opts = url.take(OPTIONS)
    cfg: dict[str, Any] = {}
    if opts.get("kernel"):
        cfg["kernel"] = opts["kernel"]
    if "mem" in opts:
        try:
            mem = parse_size(opts["mem"])
        except ValueError:
            raise BackendOptionError(url.raw, f"option mem={opts['mem']!r} is not a size (e.g. 128M)") from None
        if not 48 << 20 <= mem <= 4 << 30 or mem % (1 << 20):
            raise BackendOptionError(url.raw, f"option mem={opts['mem']!r}: whole MiB from 48M to 4G")
        cfg["mem_mib"] = mem >> 20
    if "baud" in opts:
        try:
            baud = int(opts["baud"])
        except ValueError:
            baud = -1
        if baud not in BAUDS:
            raise BackendOptionError(url.raw, f"option baud={opts['baud']!r}: a 16550 with its 1.8432 MHz clock runs "
                                              f"at 115200 / N: one of {', '.join(map(str, BAUDS[-6:]))}, ...")
        cfg["baud"] = baud
    if opts.get("floppy") not in (None, "", "0", "none"):
        value = opts["floppy"]
        if value != "generate" and not Path(value).expanduser().is_file():
            raise BackendOptionError(url.raw, f"option floppy={value!r}: no such image file (or use floppy=generate)")
        cfg["floppy"] = value if value == "generate" else str(Path(value).expanduser().resolve())
    if "sb16" in opts:
        cfg["sb16"] = url.flag("sb16")
    if "window" in opts:
        try:
            window = parse_window(opts["window"])
        except AllowListError as e:
            raise BackendOptionError(url.raw, str(e)) from None
        if window.stop > 1 << 24 or window.start < 0x1000:
            raise BackendOptionError(url.raw, "option window: ISA DMA reaches 0x1000..16 MiB")
        cfg["window"] = window
    if "reserve" in opts:
        cfg["reserve"] = url.flag("reserve")
    if "accel" in opts:
        if opts["accel"] not in ("auto", "kvm", "tcg"):
            raise BackendOptionError(url.raw, f"option accel={opts['accel']!r}: expected auto, kvm or tcg")
        cfg["accel"] = opts["accel"]
    if opts.get("link", "serial") != "serial":
        raise BackendOptionError(url.raw, f"option link={opts['link']!r}: the VM's agent line is its UART: link=serial")
    limits: tuple[tuple[str, type[float] | type[int], float, float], ...] = (
        ("timeout", float, 0.05, 600), ("retries", int, 0, 1000), ("boot_timeout", float, 1, 3600))
    for name, kind, lo, hi in limits:
        if name in opts:
            try:
                number = kind(opts[name])
            except ValueError:
                raise BackendOptionError(url.raw, f"option {name}={opts[name]!r} is not a number") from None
            if not lo <= number <= hi:
                raise BackendOptionError(url.raw, f"option {name}: {lo:g}..{hi:g}")
            cfg[name] = number
    if opts.get("binary"):
        cfg["binary"] = opts["binary"]
    return VmConfig(**cfg)


def from_url(url: BackendURL) -> VmBackend:
    return VmBackend(url.raw, parse_config(url))


class VmBackend(AgentBackend):
    """The agent backend over a VM it boots, owns and stops. ``.vm`` is the machine (pause,
    resume, reset for fault tests), ``boot_s`` the time from QEMU's start to the first HELLO."""

    scheme = "vm"

    def __init__(self, url: str = "vm:", config: VmConfig | None = None) -> None:
        self.config = config or VmConfig()
        cfg = self.config
        super().__init__(url, "", baud=cfg.baud, timeout=cfg.timeout, retries=cfg.retries, link_factory=self._open_line)
        self.vm: VirtualMachine | None = None
        self.boot_s: float | None = None

    async def _open_line(self) -> Link:
        assert self.vm is not None
        try:
            reader, writer = await streams.open_unix_connection(self.vm.link_path, limit=1 << 20)
        except OSError as e:
            raise LinkError(f"vm: the VM's serial line {self.vm.link_path}: {e}") from None
        return StreamLink(f"vm uart {self.vm.link_path}", reader, writer)

    async def _open(self) -> None:
        cfg = self.config
        t0 = time.perf_counter()
        spec = await machine_spec(cfg)
        self.link_url = f"vm serial line ({cfg.baud} baud)"
        self.vm = VirtualMachine(spec)
        try:
            await self.vm.start({"mode": "agent", "argv": cfg.agent_argv(), "files": {GUEST_ALLOW: cfg.allow_toml()}})
            await self.vm.wait_console(READY)
            try:
                await super()._open()
            except Exception as e:
                raise VmBootError(f"vm: the guest's agent did not answer HELLO: {e}", console=self.vm.console()) from None
        except BaseException:
            await self.vm.stop()
            self.vm = None
            raise
        self.boot_s = time.perf_counter() - t0
        log.info("vm_ready", accel=self.vm.accel, boot_s=round(self.boot_s, 2), baud=cfg.baud, image=str(spec.initrd))

    async def _close(self) -> None:
        try:
            await super()._close()
        finally:
            if self.vm is not None:
                await self.vm.stop()
                self.vm = None

    @property
    def capabilities(self) -> Capabilities:
        caps = super().capabilities
        cfg = self.config
        accel = self.vm.accel if self.vm is not None else cfg.accel
        details = dict(caps.details) | {"vm": {"accel": accel, "mem_mib": cfg.mem_mib, "baud": cfg.baud,
                                               "window": [cfg.window.start, cfg.window.stop], "reserved": cfg.reserve,
                                               "boot_s": round(self.boot_s, 3) if self.boot_s else None}}
        features = caps.features | set(cfg.devices())
        return replace(caps, backend="vm", identity=f"vm ({accel}, {cfg.mem_mib} MiB) {caps.identity}",
                       features=frozenset(features), details=details)


async def machine_spec(cfg: VmConfig) -> MachineSpec:
    """The boot of ``cfg``: its kernel (and the kernel's ELF), the guest image, the devices."""
    kernel_path = kernel.find_kernel(cfg.kernel)
    elf, built = await asyncio.gather(asyncio.to_thread(kernel.vmlinux_of, kernel_path), asyncio.to_thread(image.build))
    return MachineSpec(kernel=kernel_path, initrd=built.path, elf=elf, mem_mib=cfg.mem_mib, accel=cfg.accel,
                       floppy=cfg.floppy, sb16=cfg.sb16, binary=cfg.binary, boot_timeout=cfg.boot_timeout,
                       reserve=(cfg.window.start, cfg.window.stop) if cfg.reserve else None)


async def run_commands(cfg: VmConfig, commands: list[dict[str, Any]]) -> list[CommandResult]:
    """Boot a VM as ``cfg`` describes, run ``commands`` in it as root and power off: each one's
    status and output. A command starting with ``hil`` runs the guest's own ``hil``."""
    spec = await machine_spec(cfg)
    python = str(image.guest_python())
    prepared = [dict(c, argv=[python, "-m", "hil", *c["argv"][1:]] if c["argv"][:1] == ["hil"] else c["argv"])
                for c in commands]
    return await run_in_guest(spec, prepared, files={GUEST_ALLOW: cfg.allow_toml()})
