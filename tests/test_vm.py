"""The ``vm:`` backend: a Linux VM under QEMU running ``hil agent --io devport`` (docs/reference/vm.md).

Without a VM: the initramfs format (docs/reference/vm.md §2), the guest's request encoding (§4),
the kernel search and its ELF (§1), the URL options, the guest image's contents against what the
agent really imports, and the 8259 IRQ observer against the datasheet's IRR semantics
(docs/reference/8259.md §3.3, §4.1, §4.2). With a VM (a kernel from ``hil vm fetch-kernel`` and
QEMU; required under HIL_REQUIRE_ALL=1, as in CI): the doctor's diagnoses on a real kernel, the
byte-exact ``/dev/port``, the differential of every example on sim:?profile=qemu, qemu: and vm:,
and the link surviving a paused VM and detecting a reset one.
"""

from __future__ import annotations

import asyncio
import json
import lzma
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_agent_faults import Faults, big_program, on_sim

from hil.agent.links import Link
from hil.backends import BackendURL, open_backend
from hil.backends.devport import DevPortBackend, Host, from_url as devport_from_url
from hil.backends.pic import PicObserver
from hil.backends.qemu.process import qemu_available
from hil.dma import IsaDma
from hil.errors import AgentResetError, BackendOptionError, UnsupportedOperationError, VmKernelError
from hil.ops import In, IrqState, MemRead, Out, WaitIrq
from hil.testing import require
from hil.vm import cpio, guest, image, kernel
from hil.vm.backend import VmBackend, VmConfig, parse_config, run_commands

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


# --- without a VM ------------------------------------------------------------------------------


def test_cpio_newc_layout_and_round_trip():
    """§2: "070701", 13 hex fields, name with its NUL padded to 4, data padded to 4, TRAILER!!!."""
    entries = [cpio.Entry.directory("etc"), cpio.Entry.file("etc/a", b"xyz", 0o600),
               cpio.Entry.symlink("lnk", "etc/a"), cpio.Entry.chardev("dev/console", 5, 1)]
    data = cpio.archive(entries)
    assert data.startswith(b"070701") and len(data) % 4 == 0
    first_name_size = int(data[6 + 8 * 11: 6 + 8 * 12], 16)
    assert data[110:110 + first_name_size] in (b"dev/console\0", b"etc\0")
    assert data.rstrip(b"\0").endswith(b"TRAILER!!!")
    back = {e.name: e for e in cpio.members(data)}
    assert back["etc/a"].data == b"xyz" and back["etc/a"].mode & 0o777 == 0o600
    assert back["lnk"].data == b"etc/a" and back["dev/console"].rdev == (5, 1)
    assert cpio.archive(reversed(entries)) == data  # reproducible: sorted, fixed fields


def test_guest_request_round_trips_through_the_command_line():
    cfg = {"mode": "run", "commands": [{"argv": ["hil", "doctor", "devport:?window=0x10000-0x90000"]}]}
    word = guest.encode_config(cfg)
    assert word.startswith("hil.cfg=") and " " not in word and "$" not in word
    assert guest.config(f"console=ttyS1 quiet {word} PYTHONHASHSEED=0") == cfg
    assert guest.config("console=ttyS1") == {"mode": "none"}


def test_kernel_search_order_and_missing_kernel_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("HIL_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(kernel.KERNEL_ENV, raising=False)
    with pytest.raises(VmKernelError, match="hil vm fetch-kernel"):
        kernel.find_kernel()
    (tmp_path / "kernel").mkdir()
    for name in ("vmlinuz-6.1.0-9-amd64", "vmlinuz-6.1.0-10-amd64"):
        (tmp_path / "kernel" / name).write_bytes(b"k")
    assert kernel.find_kernel().name == "vmlinuz-6.1.0-10-amd64"  # numeric order, not text order
    env_kernel = tmp_path / "mine"
    env_kernel.write_bytes(b"k")
    monkeypatch.setenv(kernel.KERNEL_ENV, str(env_kernel))
    assert kernel.find_kernel() == env_kernel
    assert kernel.find_kernel(str(tmp_path / "kernel" / "vmlinuz-6.1.0-9-amd64")).name.endswith("-9-amd64")
    with pytest.raises(VmKernelError, match="no such file"):
        kernel.find_kernel(str(tmp_path / "absent"))


def test_pvh_elf_is_found_inside_an_xz_bzimage(tmp_path, monkeypatch):
    """§1: the payload after the xz magic is the ELF; without the Xen PVH note QEMU boots the bzImage."""
    monkeypatch.setenv("HIL_CACHE_DIR", str(tmp_path))
    elf = b"\x7fELF" + b"\0" * 60 + b"Xen\0" + b"\x12" * 100
    bz = tmp_path / "vmlinuz-test"
    bz.write_bytes(b"MZ" + b"\0" * 500 + lzma.compress(elf, format=lzma.FORMAT_XZ) + b"\0" * 32)
    out = kernel.vmlinux_of(bz)
    assert out is not None and out.read_bytes() == elf
    plain = tmp_path / "vmlinuz-nopvh"
    plain.write_bytes(b"MZ" + lzma.compress(b"\x7fELF" + b"\0" * 100, format=lzma.FORMAT_XZ))
    assert kernel.vmlinux_of(plain) is None


@pytest.mark.parametrize(("url", "fragment"), [
    ("vm:?baud=230400", "115200 / N"),
    ("vm:?link=tcp", "link=serial"),
    ("vm:?window=0x10000-0x2000000", "16 MiB"),
    ("vm:?floppy=/nonexistent.img", "no such image file"),
    ("vm:?mem=16M", "48M"),
    ("vm:?accel=hvf", "auto, kvm or tcg"),
    ("vm:?colour=1", "unknown option"),
    ("vm://host/x", "options only"),
])
def test_bad_vm_options_are_one_line_errors(url, fragment):
    with pytest.raises(BackendOptionError, match=fragment.replace("(", r"\(").replace("?", r"\?")):
        parse_config(BackendURL.parse(url))


def test_vm_config_becomes_the_guest_agent_command():
    cfg = parse_config(BackendURL.parse("vm:?floppy=generate&sb16=1&baud=9600"))
    argv = cfg.agent_argv()
    assert argv[argv.index("--listen") + 1] == "serial:///dev/ttyS0?baud=9600"
    io = argv[argv.index("--io") + 1]
    assert "devices=fdc,sb16" in io and "irq=pic" in io and "window=0x10000-0x90000" in io
    assert '"0x3F0-0x3F7"' in cfg.allow_toml() and '"0x220-0x22F"' in cfg.allow_toml()
    plain = VmConfig()
    assert "irq=" not in plain.devport_url() and '"0x3F0' not in plain.allow_toml()


def test_guest_image_holds_every_module_the_agent_imports(tmp_path):
    """§3: run the guest's programs' imports on this host and check the image has each module
    they load (a module left out is an ImportError at the guest's boot, seen only in a VM)."""
    probe = ("import sys, json, hil.cli, hil.cli.agent, hil.agent.server, hil.backends.devport, hil.doctor, serial, "
             "serial.serialposix, structlog, concurrent.futures.thread, mmap, termios, fcntl, select, secrets, tty; "
             "print(json.dumps(sorted({m.__file__ for m in list(sys.modules.values()) if getattr(m, '__file__', None)})))")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    loaded = json.loads(subprocess.run([PY, "-c", probe], capture_output=True, text=True, check=True, env=env).stdout)
    lay = image.layout()
    stdlib_sources = {str(p) for p in lay.stdlib}
    guest_files = {str(p) for p in lay.files.values()}
    missing = []
    for path in loaded:
        real = os.path.realpath(path)
        if path in stdlib_sources or real in guest_files or path in guest_files:
            continue
        if Path(path).name.split(".")[0] in image.OPTIONAL_EXTENSIONS or "/_distutils_hack/" in path:
            continue  # left out on purpose (their importers fall back), and setuptools' venv hook
        missing.append(path)
    assert missing == []
    assert lay.made["/init"].startswith(b"#!" + str(image.guest_python()).encode() + b"\n")


class FakePics:
    """The two 8259s' IRR and the chipset's ELCR as the datasheet describes them: in edge mode
    an IRR bit is latched by a rising edge and kept (QEMU keeps it until INTA,
    docs/reference/8259.md §7); in
    level mode it follows the line (§4.2); OCW3 selects IRR or ISR for even-port reads (§3.3)."""

    def __init__(self) -> None:
        self.elcr = [0x00, 0x00]
        self.lines = 0
        self.edge_latch = 0
        self.read_isr = [False, False]
        self.writes: list[tuple[int, int]] = []

    def set_line(self, n: int, high: bool) -> None:
        if high and not self.lines >> n & 1:
            self.edge_latch |= 1 << n
        self.lines = self.lines | 1 << n if high else self.lines & ~(1 << n)

    def irr(self) -> int:
        level = self.elcr[0] | self.elcr[1] << 8
        return (self.lines & level) | (self.edge_latch & ~level)

    def read(self, port: int) -> int:
        match port:
            case 0x4D0 | 0x4D1:
                return self.elcr[port - 0x4D0]
            case 0x20 | 0xA0:
                chip = 0 if port == 0x20 else 1
                return 0x00 if self.read_isr[chip] else self.irr() >> (8 * chip) & 0xFF
        raise AssertionError(f"read of port 0x{port:X}")

    def write(self, port: int, value: int) -> None:
        self.writes.append((port, value))
        match port:
            case 0x4D0 | 0x4D1:
                self.elcr[port - 0x4D0] = value
            case 0x20 | 0xA0:
                assert value & 0x18 == 0x08, "only OCW3 may be written to a command port"
                if value & 0x02:
                    self.read_isr[0 if port == 0x20 else 1] = bool(value & 1)
            case _:
                raise AssertionError(f"write of port 0x{port:X}")


def test_pic_observer_sees_levels_and_counts_edges_and_restores_the_elcr():
    pics = FakePics()
    pics.elcr = [0x08, 0x00]  # IRQ 3 already level (a PCI line the firmware set)
    pics.read_isr = [True, True]  # left selecting the ISR: the observer must select the IRR itself
    obs = PicObserver([6, 10], pics.read, pics.write)
    obs.start()
    assert pics.elcr == [0x48, 0x04]
    pics.set_line(6, True)
    lines = obs.sample()
    assert lines.level(6) and lines.count(6) == 1 and not lines.level(10)
    pics.set_line(6, False)
    assert not obs.sample().level(6)  # level mode: the IRR follows the line (edge mode would keep it)
    pics.set_line(6, True)
    pics.set_line(10, True)
    lines = obs.sample()
    assert lines.count(6) == 2 and lines.count(10) == 1 and lines.level(10)
    assert obs.wait(10, False, 0.01).level(10)  # times out at the other level
    obs.stop()
    assert pics.elcr == [0x08, 0x00]
    with pytest.raises(ValueError, match="IRQ 2"):
        PicObserver([2], pics.read, pics.write)


def test_devport_declared_devices_and_irq_options(tmp_path):
    ok = devport_from_url(BackendURL.parse("devport:?devices=fdc&irq=pic&window=0x10000-0x20000"))
    assert ok.irq_lines == (6,) and ok.allow.port_allowed(0x3F5)
    assert {"fdc", "irq"} <= {f.value for f in ok.capabilities.features}
    for url, fragment in [("devport:?irq=pic", "needs lines"), ("devport:?irq_lines=6", "needs irq=pic"),
                          ("devport:?irq=apic&irq_lines=6", "only observer is pic"),
                          ("devport:?irq=pic&irq_lines=2", "IRQ 2 cannot"), ("devport:?devices=gus", "unknown device")]:
        with pytest.raises(BackendOptionError, match=fragment):
            devport_from_url(BackendURL.parse(url))


async def test_devport_irq_ops_run_through_the_observer(tmp_path):
    pics = FakePics()
    port = tmp_path / "port"
    port.write_bytes(bytes(0x500))

    def pread(fd: int, n: int, off: int) -> bytes:
        return bytes([pics.read(off)]) if off in (0x20, 0xA0, 0x4D0, 0x4D1) else os.pread(fd, n, off)

    def pwrite(fd: int, data: bytes, off: int) -> int:
        if off in (0x20, 0xA0, 0x4D0, 0x4D1):
            pics.write(off, data[0])
            return 1
        return os.pwrite(fd, data, off)

    be = DevPortBackend("devport:", port_path=str(port), host=Host(pread=pread, pwrite=pwrite), irq_lines=(6,))
    async with be:
        assert pics.elcr[0] == 0x40
        pics.set_line(6, True)
        lines, = await be.execute([IrqState()])
        assert lines.level(6) and be.irq_count(6) == 1
        assert await be.wait_irq(6, True, 0.1)
        with pytest.raises(UnsupportedOperationError, match="observes only lines 6"):
            await be.execute([WaitIrq(5)])
    assert pics.elcr[0] == 0x00  # restored on close


# --- with a VM ---------------------------------------------------------------------------------


def _vm_available() -> None:
    ok, why = qemu_available()
    require(ok, "qemu-system-x86_64 (QEMU 7.2 or later)", why)
    try:
        kernel.find_kernel()
    except VmKernelError as e:
        require(False, "a kernel for the VM", str(e))


@pytest.fixture(scope="module")
def vm_ready():
    _vm_available()


async def test_doctor_gives_the_documented_diagnoses_on_a_real_kernel(vm_ready):
    """§4: as root everything passes; without CAP_SYS_RAWIO both devices refuse (EPERM); with
    the window not reserved, STRICT_DEVMEM refuses to map System RAM. Plus the byte-exact
    /dev/port: one byte per offset, and a 2-byte write lands on two ports (why devport refuses it)."""
    window = "0x10000-0x90000"
    byte_check = ("import os; fd = os.open('/dev/port', os.O_RDWR); "
                  "os.pwrite(fd, b'\\x00', 0x0C); os.pwrite(fd, b'\\x34', 0x04); os.pwrite(fd, b'\\x12', 0x04); "
                  "os.pwrite(fd, b'\\x00', 0x0C); a = os.pread(fd, 1, 0x04) + os.pread(fd, 1, 0x04); "
                  "os.pwrite(fd, b'\\x00', 0x0C); os.pwrite(fd, b'\\xAA\\xBB', 0x81); "
                  "print(a.hex(), os.pread(fd, 1, 0x81).hex(), os.pread(fd, 1, 0x82).hex(), os.pread(fd, 2, 0x81).hex())")
    cfg = parse_config(BackendURL.parse(f"vm:?window={window}"))
    results = await run_commands(cfg, [
        {"argv": ["hil", "doctor", "--json", f"devport:?window={window}"]},
        {"argv": ["hil", "doctor", "--json", f"devport:?window={window}"], "drop_caps": [17]},
        {"argv": [str(image.guest_python()), "-c", byte_check]},
    ])
    root, no_rawio, exact = results
    checks = {c["check"]: c["status"] for c in json.loads(root.stdout)["checks"]}
    assert root.rc == 0 and checks["CAP_SYS_RAWIO"] == "ok" and checks["memory device"] == "ok"
    assert checks["reservation"] == "ok" and checks["lockdown"] in ("ok", "skip")
    denied = {c["check"]: c for c in json.loads(no_rawio.stdout)["checks"]}
    assert no_rawio.rc == 1 and denied["CAP_SYS_RAWIO"]["status"] == "fail"
    assert "EPERM" in denied["port device"]["message"] and "EPERM" in denied["memory device"]["message"]
    # channel 2's address written LSB then MSB reads back so; a 2-byte write at 0x81 put AA on
    # page port 0x81 and BB on 0x82 (two ports, not one 16-bit register)
    assert exact.rc == 0, exact.stderr
    assert exact.stdout.split() == ["3412", "aa", "bb", "aabb"]
    unreserved = parse_config(BackendURL.parse("vm:?window=0x100000-0x180000&reserve=0"))
    (ram,) = await run_commands(unreserved, [{"argv": ["hil", "doctor", "--json", "devport:?window=0x100000-0x180000"]}])
    failed = {c["check"]: c for c in json.loads(ram.stdout)["checks"]}
    assert ram.rc == 1 and failed["memory device"]["status"] == "fail"
    assert "STRICT_DEVMEM" in failed["memory device"]["message"] and "memmap=0x80000$0x100000" in failed["memory device"]["fix"]


def test_every_qemu_example_agrees_on_qemu_and_on_the_vm(vm_ready, tmp_path):
    """§6 and the issue's differential: the same QEMU PC through qtest and through a real kernel's
    port I/O and the agent over the UART. Only the documented timing tolerances may differ."""
    devices = "floppy=generate&sb16=1"
    scripts = sorted(str(p) for p in (ROOT / "configs" / "scripts").glob("*.toml"))
    out = tmp_path / "diff.json"
    proc = subprocess.run([PY, "-m", "hil", "diff", *scripts, "-b", f"sim:?profile=qemu&{devices}", "-b",
                           f"qemu:?{devices}", "-b", f"vm:?{devices}", "--deviations",
                           str(ROOT / "configs" / "deviations" / "qemu-vs-vm.toml"), "--json"],
                          capture_output=True, text=True, timeout=900, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    out.write_text(proc.stdout)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    counted = [d for d in report["divergences"] if not d.get("tolerated")]
    assert counted == [], proc.stderr[-2000:]
    assert len(report["scripts"]) == len(scripts) and report["compared"] > 800
    assert [s.split(" on ")[0] for s in report["skipped"]] == ["transfer-16bit"]  # the sim-only one
    assert report["errors"] == [] and proc.returncode == 0


class FaultyLine(Link):
    """The VM's serial line with the agent fault suite's per-frame faults (drop, duplicate,
    corrupt, reorder: tests/test_agent_faults.py ``Faults``) applied both ways; frames are cut
    at their 0x00 delimiter first, since a socket read may end inside one."""

    def __init__(self, inner: Link, faults: Faults) -> None:
        super().__init__(f"faulty {inner.name}")
        self.inner, self.faults = inner, faults
        self._down: asyncio.Queue[bytes] = asyncio.Queue()
        self._up: asyncio.Queue[bytes] = asyncio.Queue()
        self._partial = b""
        self._tasks = [asyncio.create_task(self._pump_down()), asyncio.create_task(self._pump_up())]

    async def _pump_down(self) -> None:
        while True:
            data = await self.inner.read()
            if not data:
                self._down.put_nowait(b"")
                return
            self._partial += data
            cut = self._partial.rfind(b"\0") + 1
            whole, self._partial = self._partial[:cut], self._partial[cut:]
            if whole:
                self.faults.relay("down", whole, self._down.put_nowait)

    async def _pump_up(self) -> None:
        while True:
            data = await self._up.get()
            try:
                await self.inner.write(data)
            finally:
                self._up.task_done()

    async def read(self) -> bytes:
        return await self._down.get()

    async def write(self, data: bytes) -> None:
        self.faults.relay("up", data, self._up.put_nowait)
        await self._up.join()  # as a real line's write: back-pressure while the far end does not read

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.inner.close()


async def test_agent_fault_suite_over_the_uart(vm_ready):
    """Over the real UART: frames dropped, duplicated, corrupted and reordered both ways (10 %
    each) still run once each, in order, with the simulator's results (the flip-flop makes a
    repeated frame show in the values)."""
    faults = Faults(7, {}, exec_only=False)
    be = open_backend("vm:?timeout=0.5&retries=200")
    assert isinstance(be, VmBackend)
    line = be._link_factory  # the VM's socket: every (re)connect goes through the fault layer

    async def faulty() -> Link:
        return FaultyLine(await line(), faults)

    be._link_factory = faulty
    async with be:
        assert be.vm is not None
        faults.rates = {"drop": 0.1, "duplicate": 0.1, "corrupt": 0.1, "reorder": 0.1}
        for seed in range(5, 25):  # until every kind of fault has hit a frame (a program is a few frames)
            program = big_program(seed)
            assert await be.execute(program) == await on_sim(program), f"seed {seed}"
            if set(faults.seen.faults) == {"drop", "duplicate", "corrupt", "reorder"}:
                break
        assert set(faults.seen.faults) == {"drop", "duplicate", "corrupt", "reorder"}, faults.seen.faults
        assert be.stats.retries > 0


async def test_link_survives_a_paused_vm_and_detects_a_reset_one(vm_ready):
    """The VM's CPUs stopped mid-program (QMP stop) and resumed: the program completes with the
    right data through the client's retries. The VM reset mid-program: the program fails with
    AgentResetError, the driver layer's reset listener restores what it had programmed, and the
    next program runs on the rebooted agent."""
    async with open_backend("vm:?timeout=0.5&retries=200") as be:
        assert isinstance(be, VmBackend) and be.vm is not None
        await be.execute([MemRead(0x10000, 16)])
        pattern = bytes(range(256)) * 64
        await be.write_mem(0x20000, pattern)
        task = asyncio.create_task(be.read_mem(0x20000, len(pattern)))
        await asyncio.sleep(0.05)
        await be.vm.pause()
        assert await be.vm.qmp.status() == "paused"
        await asyncio.sleep(2.5)  # longer than a round trip's timeout: frames are retried
        await be.vm.resume()
        assert await asyncio.wait_for(task, 600) == pattern  # generous: a loaded machine slows TCG
        dma = IsaDma(be)
        async with dma.claim_dma_lock():
            await dma.set_dma_mode(2, 0x44)  # DMA_MODE_READ; the channel is ORed in
            await dma.set_dma_addr(2, 0x34000)
            await dma.set_dma_count(2, 512)
        nonce = be.boot_nonce
        task = asyncio.create_task(be.read_mem(0x20000, len(pattern)))
        await asyncio.sleep(0.05)
        await be.vm.reset()
        with pytest.raises(AgentResetError):
            try:
                await asyncio.wait_for(task, 600)  # the guest reboots under TCG
            except AgentResetError:
                raise
            except Exception as e:  # say what the guest was doing
                raise AssertionError(f"{type(e).__name__}: {e}\nguest console:\n{be.vm.console(3000)}") from None
        assert be.boot_nonce != nonce and be.stats.resets == 1
        # the listener re-wrote the page register the driver had programmed (the BIOS cleared it)
        assert (await be.execute([In(0x81)]))[0] == 0x03
        assert (await be.execute([Out(0x82, 0x5A), In(0x82)])) == [0x5A]


VM_CHILD = """
import asyncio, sys
from hil.backends import open_backend

async def main():
    be = open_backend("vm:")
    opening = asyncio.create_task(be.open())
    while be.vm is None or be.vm.pid is None or be.vm.workdir is None:
        if opening.done():
            opening.result()
        await asyncio.sleep(0.01)
    print("QEMU-PID", be.vm.pid, be.vm.workdir, flush=True)
    if sys.argv[1] == "exit":
        return  # leaves while the VM boots, without closing: the atexit handler must stop QEMU
    await asyncio.sleep(120)

asyncio.run(main())
"""


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("how", ["SIGKILL", "exit"])
def test_no_orphan_qemu_or_directory_when_the_host_goes(vm_ready, tmp_path, how):
    """§5: the host killed (or leaving without closing) while its VM boots: QEMU goes with it,
    and the private directory is removed (at exit) or swept by the next run (after SIGKILL)."""
    import signal

    from hil.backends.qemu.process import sweep_stale_workdirs
    from hil.vm.instance import WORKDIR_PREFIX

    script = tmp_path / "child.py"
    script.write_text(VM_CHILD)
    proc = subprocess.Popen([PY, str(script), "sleep" if how == "SIGKILL" else "exit"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert proc.stdout is not None
        line = next((raw for raw in proc.stdout if raw.startswith("QEMU-PID ")), None)
        assert line is not None, "the child did not start its VM"
        _, pid_text, workdir_text = line.split()
        pid, workdir = int(pid_text), Path(workdir_text)
        if how == "SIGKILL":
            assert not _gone(pid, 0.1)
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert _gone(pid), f"QEMU {pid} outlived its host ({how})"
        if how == "SIGKILL":
            assert workdir.exists()  # a killed interpreter cannot clean up ...
            sweep_stale_workdirs(WORKDIR_PREFIX)  # ... the next vm: open sweeps it
        assert not workdir.exists(), "the VM's private directory was left behind"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
