"""One VM: its QEMU process, private directory, serial line, console and monitor.

The machine is QEMU's PC (``-machine pc``: the i8257 pair, the FDC, an SB16 on request), started
with the kernel and the guest image, two 16550 UARTs (``ttyS0``: the agent's line, a QEMU
chardev on a unix socket the host connects to; ``ttyS1``: the kernel console and init's output,
into ``console.log``) and QMP on a second socket for pause, resume and reset. It has the same
guarantees as ``qemu:`` (docs/reference/vm.md §5): its own process group and session,
``PR_SET_PDEATHSIG``, an ``atexit`` stop, a private directory with the owner's PID that a later
run sweeps if this interpreter is killed.

Acceleration: KVM only when a probe shows it works (``/dev/kvm`` can be present and still run no
guest, as in some nested set-ups, where QEMU spins without progress: :func:`kvm_usable`). Its
answer is kept for the host's boot (``/proc/sys/kernel/random/boot_id``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import field
from pathlib import Path
from typing import Any, BinaryIO

from hil import streams
from hil.backends.qemu.firmware import floppy_image
from hil.backends.qemu.process import (
    LIVE,
    OWNER_FILE,
    die_with_parent,
    find_binary,
    signal_group,
    stop_process,
    sweep_stale_workdirs,
)
from hil.errors import QmpError, VmBootError, VmError
from hil.log import get_logger
from hil.records import dataclass
from hil.vm.cpio import Entry, archive
from hil.vm.guest import RESULT_TAG, encode_config
from hil.vm.image import cache_dir
from hil.vm.qmp import Qmp

log = get_logger("hil.vm")

WORKDIR_PREFIX = "hil-vm-"
KVM_PROBE_S = 8.0  #: a working KVM needs about 1 s for the probe boot; TCG would need 3
CAP_SYS_RAWIO = 17  #: linux/capability.h
#: kernel parameters of every boot, and why (docs/reference/vm.md §1): the console on the second
#: UART, a CPU random source trusted so that Python's start-up does not find the pool empty,
#: no mitigations and no TSC and timer checks (each costs boot time under TCG and guards nothing
#: in a throw-away VM), no crypto self-tests
BASE_CMDLINE = ("console=ttyS1", "quiet", "random.trust_cpu=on", "mitigations=off", "tsc=reliable",
                "no_timer_check", "cryptomgr.notests", "PYTHONHASHSEED=0")


@dataclass(frozen=True)
class MachineSpec:
    """What one boot is: kernel, image, memory, devices, and the kernel command line's extra."""

    kernel: Path
    initrd: Path
    elf: Path | None = None  #: the kernel's PVH ELF, started directly when there is one
    mem_mib: int = 128
    accel: str = "auto"  #: auto | kvm | tcg
    floppy: str | None = None  #: "generate" or an image path
    sb16: bool = False
    reserve: tuple[int, int] | None = (0x10000, 0x90000)  #: memmap= window [start, end), None: not reserved
    binary: str | None = None
    boot_timeout: float = 120.0
    extra_args: tuple[str, ...] = ()


@dataclass
class CommandResult:
    """One command the guest ran in ``run`` mode (doctor checks, /dev/port probes)."""

    index: int
    rc: int
    stdout: str
    stderr: str
    seconds: float = 0.0


_KVM: dict[str, bool] = {}  #: boot_id -> whether KVM ran the probe


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


async def kvm_usable(binary: str, kernel: Path) -> bool:
    """Whether KVM boots ``kernel`` here (see the module docstring); cached per host boot.

    The probe boots the kernel with an empty initramfs and ``panic=-1`` under ``-no-reboot``: a
    working KVM reaches "no init found" and the reboot that ends QEMU in about a second. A
    firmware-sized probe is not enough: KVM in some nested set-ups runs real-mode code and then
    spins forever once the kernel enables paging."""
    boot = f"{_boot_id()}:{kernel}"
    if boot in _KVM:
        return _KVM[boot]
    marker = cache_dir() / "kvm-probe.json"
    with contextlib.suppress(OSError, ValueError):
        saved = json.loads(marker.read_text())
        if saved.get("key") == boot:
            _KVM[boot] = bool(saved["usable"])
            return _KVM[boot]
    usable = False
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        with tempfile.TemporaryDirectory(prefix="hil-kvm-probe-") as tmp:
            empty = Path(tmp) / "empty.cpio"
            empty.write_bytes(archive([Entry.directory("dev")]))
            t0 = time.perf_counter()
            proc = await asyncio.create_subprocess_exec(
                binary, "-machine", "pc,accel=kvm", "-cpu", "host", "-m", "64M", "-nodefaults", "-display", "none",
                "-no-reboot", "-kernel", str(kernel), "-initrd", str(empty),
                "-append", "panic=-1 quiet mitigations=off", stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                preexec_fn=functools.partial(die_with_parent, os.getpid()), start_new_session=True)
            try:
                usable = await asyncio.wait_for(proc.wait(), KVM_PROBE_S) == 0
            except TimeoutError:
                signal_group(proc.pid, signal.SIGKILL)
                await proc.wait()
            log.info("vm_kvm_probe", usable=usable, seconds=round(time.perf_counter() - t0, 2))
    _KVM[boot] = usable
    with contextlib.suppress(OSError):
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"key": boot, "usable": usable}))
    return usable


@dataclass
class VirtualMachine:
    """A started VM. ``link_path`` is the agent line's socket; ``qmp`` the monitor."""

    spec: MachineSpec
    workdir: Path | None = None
    accel: str = "tcg"
    pid: int | None = None
    qmp: Qmp | None = None
    started_at: float = 0.0
    _proc: asyncio.subprocess.Process | None = None
    _log: BinaryIO | None = None
    floppy_path: Path | None = None
    command: list[str] = field(default_factory=list)

    @property
    def link_path(self) -> str:
        assert self.workdir is not None
        return str(self.workdir / "link.sock")

    @property
    def console_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "console.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def console(self, limit: int = 4000) -> str:
        """The tail of the guest's console: kernel messages, init's and the agent's output."""
        try:
            return self.console_path.read_bytes()[-limit:].decode(errors="replace")
        except (OSError, AssertionError):
            return ""

    def cmdline(self, cfg: dict[str, Any]) -> str:
        words = list(BASE_CMDLINE)
        if self.spec.reserve is not None:
            start, end = self.spec.reserve
            words.append(f"memmap={end - start:#x}${start:#x}")
        return " ".join([*words, encode_config(cfg)])

    def argv(self, binary: str, cfg: dict[str, Any]) -> list[str]:
        spec, work = self.spec, self.workdir
        assert work is not None
        kernel = spec.elf or spec.kernel
        argv = [binary, "-machine", f"pc,accel={self.accel}", "-cpu", "host" if self.accel == "kvm" else "qemu64,+rdrand",
                "-m", f"{spec.mem_mib}M", "-nodefaults", "-no-user-config", "-display", "none",
                "-monitor", "none", "-parallel", "none",
                "-kernel", str(kernel), "-initrd", str(spec.initrd), "-append", self.cmdline(cfg),
                "-chardev", f"socket,id=link,path={work}/link.sock,server=on,wait=off", "-serial", "chardev:link",
                "-chardev", f"file,id=con,path={work}/console.log", "-serial", "chardev:con",
                "-qmp", f"unix:{work}/qmp.sock,server=on,wait=off"]
        if self.floppy_path is not None:
            argv += ["-drive", f"if=floppy,index=0,file={str(self.floppy_path).replace(',', ',,')},format=raw"]
        if spec.sb16:
            argv += ["-audiodev", "none,id=snd0", "-device", "sb16,audiodev=snd0"]
        return argv + list(spec.extra_args)

    async def start(self, cfg: dict[str, Any]) -> None:
        """Start QEMU with the guest asked to do ``cfg`` (:mod:`hil.vm.guest`); returns once the
        monitor answers, before the guest has booted."""
        binary = find_binary(self.spec.binary)
        if binary is None:
            raise VmError(f"vm: {self.spec.binary or 'qemu-system-x86_64'} not found; "
                          "install it with: apt-get install qemu-system-x86")
        match self.spec.accel:
            case "kvm":
                self.accel = "kvm"
            case "tcg":
                self.accel = "tcg"
            case _:
                self.accel = "kvm" if await kvm_usable(binary, self.spec.elf or self.spec.kernel) else "tcg"
        sweep_stale_workdirs(WORKDIR_PREFIX)
        self.started_at = time.perf_counter()
        try:
            self.workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
            (self.workdir / OWNER_FILE).write_text(str(os.getpid()))
            if self.spec.floppy == "generate":
                self.floppy_path = self.workdir / "floppy.img"
                await asyncio.to_thread(self.floppy_path.write_bytes, floppy_image())
            elif self.spec.floppy:
                self.floppy_path = Path(self.spec.floppy)
            self._log = await asyncio.to_thread(open, self.workdir / "qemu.log", "wb")  # closed in stop()
        except OSError as e:
            await self.stop()
            raise VmError(f"vm: cannot set up a private directory in {tempfile.gettempdir()}: {e}") from None
        self.command = self.argv(binary, cfg)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                preexec_fn=functools.partial(die_with_parent, os.getpid()), start_new_session=True)
        except OSError as e:
            await self.stop()
            raise VmError(f"vm: cannot run {binary}: {e}") from None
        self.pid = self._proc.pid
        LIVE[self._proc.pid] = str(self.workdir)
        log.debug("vm_spawned", pid=self.pid, accel=self.accel, argv=" ".join(self.command))
        try:
            self.qmp = await self._connect_qmp()
        except BaseException:
            await self.stop()
            raise

    async def _connect_qmp(self) -> Qmp:
        assert self.workdir is not None
        path = str(self.workdir / "qmp.sock")
        deadline = time.monotonic() + 10.0
        while True:  # QEMU creates the socket a moment after it starts; nothing signals it
            if self._proc is not None and self._proc.returncode is not None:
                raise VmBootError(f"vm: QEMU exited with status {self._proc.returncode}: {self.qemu_log()}")
            if os.path.exists(path):  # noqa: ASYNC240 - one stat of a socket path, no disk I/O to wait for
                try:
                    return await Qmp.connect(path)
                except QmpError:
                    if time.monotonic() > deadline:
                        raise
            elif time.monotonic() > deadline:
                raise VmBootError(f"vm: QEMU did not open its monitor within 10 s: {self.qemu_log()}")
            await asyncio.sleep(0.02)

    def qemu_log(self) -> str:
        try:
            assert self.workdir is not None
            return (self.workdir / "qemu.log").read_bytes()[-800:].decode(errors="replace").strip()
        except (OSError, AssertionError):
            return ""

    async def wait_console(self, needle: str, timeout: float | None = None, *, since: int = 0) -> int:
        """Until ``needle`` appears in the console after byte ``since``; the offset after it.
        :class:`VmBootError` with the console's tail when QEMU exits, the guest panics, or the
        time is up. The console is a file QEMU appends to: polled, nothing signals a write."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.spec.boot_timeout)
        while True:
            try:
                text = self.console_path.read_bytes()[since:].decode(errors="replace")
            except OSError:
                text = ""
            at = text.find(needle)
            if at >= 0:
                return since + len(text[:at + len(needle)].encode())
            if "Kernel panic" in text:
                raise VmBootError("vm: the guest kernel panicked", console=self.console())
            if not self.running:
                raise VmBootError(f"vm: QEMU exited (status {self._proc.returncode if self._proc else '?'}) "
                                  f"before the guest was ready: {self.qemu_log()}", console=self.console())
            if time.monotonic() > deadline:
                raise VmBootError(f"vm: the guest did not print {needle!r} within "
                                  f"{timeout if timeout is not None else self.spec.boot_timeout:g} s", console=self.console())
            await asyncio.sleep(0.05)

    async def pause(self) -> None:
        """Stop the vCPUs and the virtual clock (QMP ``stop``), as a board whose CPU is held."""
        await self._monitor("stop")

    async def resume(self) -> None:
        await self._monitor("cont")

    async def reset(self) -> None:
        """A hard reset of the whole machine (QMP ``system_reset``): the guest reboots."""
        await self._monitor("system_reset")

    async def _monitor(self, command: str) -> None:
        if self.qmp is None:
            raise VmError(f"vm: {command}: the VM is not running")
        await self.qmp.execute(command)

    async def wait_exit(self, timeout: float) -> int | None:
        if self._proc is None:
            return None
        try:
            return await asyncio.wait_for(self._proc.wait(), timeout)
        except TimeoutError:
            return None

    async def stop(self) -> None:
        """Stop QEMU and remove the private directory; safe to call twice and after a failure."""
        if self.qmp is not None:
            await self.qmp.close()
            self.qmp = None
        proc = self._proc
        if proc is not None:
            await stop_process(proc)
            log.debug("vm_stopped", pid=proc.pid, status=proc.returncode)
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


async def run_in_guest(spec: MachineSpec, commands: Sequence[dict[str, Any]],
                       files: dict[str, str] | None = None) -> list[CommandResult]:
    """Boot a VM that runs ``commands`` (``{"argv": [...], "drop_caps": [...], "timeout": s}``)
    one after another and powers off; their exit statuses and output. The results travel on the
    agent line (``ttyS0``), one tagged line each."""
    vm = VirtualMachine(spec)
    cfg: dict[str, Any] = {"mode": "run", "commands": list(commands), "files": files or {}}
    await vm.start(cfg)
    try:
        reader, writer = await _open_line(vm)
        results: list[CommandResult] = []
        deadline = time.monotonic() + spec.boot_timeout + sum(float(c.get("timeout", 120)) for c in commands)
        try:
            while True:
                remaining = deadline - time.monotonic()
                try:
                    line = await asyncio.wait_for(reader.readline(), max(remaining, 0.01))
                except TimeoutError:
                    raise VmBootError("vm: the guest's commands did not finish in time", console=vm.console()) from None
                if not line:
                    raise VmBootError("vm: the guest's line closed before its last result", console=vm.console())
                text = line.decode(errors="replace").strip()
                if not text.startswith(RESULT_TAG):
                    continue
                payload = text[len(RESULT_TAG):].strip()
                if payload == "END":
                    break
                record = json.loads(base64.b64decode(payload))
                results.append(CommandResult(record["index"], record["rc"], record["stdout"], record["stderr"],
                                             record.get("seconds", 0.0)))
        finally:
            writer.close()
        await vm.wait_exit(10.0)
        return results
    finally:
        await vm.stop()


async def _open_line(vm: VirtualMachine) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    deadline = time.monotonic() + 10.0
    while True:  # the chardev socket appears when QEMU has set up its serial ports
        try:
            return await streams.open_unix_connection(vm.link_path, limit=1 << 22)
        except OSError:
            if time.monotonic() > deadline or not vm.running:
                raise VmBootError(f"vm: cannot connect to the guest's serial line {vm.link_path}: {vm.qemu_log()}",
                                  console=vm.console()) from None
            await asyncio.sleep(0.02)
