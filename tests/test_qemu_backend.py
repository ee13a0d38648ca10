"""The ``qemu:`` backend itself: URL options, start-up and its errors, the qtest mapping of every
operation, pipelining, refusals before anything is sent, and no orphan QEMU processes.

Tests that need QEMU call :func:`need_qemu` (hil.testing.require): locally they skip with the
install hint when qemu-system-x86_64 7.2+ is missing; in CI (HIL_REQUIRE_ALL=1) that is a failure.
The option, error and fake-binary tests need no QEMU. References: docs/reference/qemu-qtest.md §1-§5, §8.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from hil.backends import available_backends, open_backend
from hil.backends.base import Capability
from hil.backends.qemu import (
    INSTALL_HINT,
    QemuBackend,
    QemuExitedError,
    QemuNotFoundError,
    QemuStartError,
    QemuVersionError,
    find_binary,
    floppy_image,
    floppy_sector,
    halt_firmware,
    qemu_available,
)
from hil.errors import (
    AccessDeniedError,
    BackendClosedError,
    BackendOptionError,
    MemoryRangeError,
    UnsupportedOperationError,
    WideAccessError,
)
from hil.ops import Delay, In, MemFill, MemRead, MemWrite, Out, Poll
from hil.testing import require

ROOT = Path(__file__).resolve().parent.parent


def need_qemu() -> None:
    ok, why = qemu_available()
    require(ok, "qemu-system-x86_64 (QEMU 7.2 or later)", why)


def fake_qemu(tmp_path: Path, version: str = "7.2.0", body: str = "exit 1") -> str:
    """A shell script that answers --version like QEMU and does ``body`` otherwise."""
    path = tmp_path / "qemu-system-x86_64"
    path.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        if [ "$1" = "--version" ]; then echo "QEMU emulator version {version} (fake)"; exit 0; fi
        {body}
        """))
    path.chmod(0o755)
    return str(path)


def gone(pid: int) -> bool:
    """The process is gone (or a zombie nobody has reaped yet: it runs no more)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True
    return state in ("Z", "X")


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.02)
    return gone(pid)


# --- options, capabilities, errors (no QEMU needed) ------------------------------------------------


def test_registered_with_a_description():
    assert "qemu" in available_backends()
    assert "qtest" in available_backends()["qemu"]


def test_options_parse():
    be = open_backend("qemu:?mem=32M&cpu=stopped&floppy=generate&sb16=1&allow=0x378-0x37F,0x2F8&timeout=3"
                      "&args=-icount%20shift=0,sleep=off&wide=pass")
    assert isinstance(be, QemuBackend)
    cfg = be.config
    assert (cfg.mem, cfg.cpu, cfg.floppy, cfg.sb16, cfg.timeout, cfg.wide) == (32 << 20, "stopped", "generate", True, 3.0, True)
    assert cfg.allow == (range(0x378, 0x380), range(0x2F8, 0x2F9))
    assert cfg.args == ("-icount", "shift=0,sleep=off")
    argv = be.command_line("/tmp/x.sock", "/tmp/halt.bin")
    assert argv[1:3] == ["-machine", "pc"] and "-S" in argv and "-bios" not in argv
    assert ["-qtest-log", "none"] == argv[argv.index("-qtest-log"):argv.index("-qtest-log") + 2]
    assert "unix:/tmp/x.sock" in argv and "-nodefaults" in argv and argv[-2:] == ["-icount", "shift=0,sleep=off"]
    assert "sb16,audiodev=snd0" in argv and ["-m", "32M"] == argv[argv.index("-m"):argv.index("-m") + 2]
    halt = open_backend("qemu:").command_line("/s", "/b.bin")
    assert "-S" not in halt and halt[halt.index("-bios") + 1] == "/b.bin"


@pytest.mark.parametrize("url, message", [
    ("qemu:?mem=3M5", "is not a size"),
    ("qemu:?mem=1M", "whole MiB from 2M to 2G"),
    ("qemu:?mem=1500K", "whole MiB"),
    ("qemu:?cpu=running", "expected halt or stopped"),
    ("qemu:?floppy=/no/such/image.img", "no such image file"),
    ("qemu:?sb16=maybe", "expected 0 or 1"),
    ("qemu:?allow=0x3F7-0x3F0", "ends before it starts"),
    ("qemu:?args=-qtest%20unix:/x", "set by the backend itself"),
    ("qemu:?args=%22unbalanced", "option args"),
    ("qemu:?timeout=0", "0..600 seconds"),
    ("qemu:?wide=yes", "expected refuse or pass"),
    ("qemu:?speed=fast", "unknown option 'speed'"),
    ("qemu://host/x", "takes options only"),
])
def test_bad_options_are_refused(url: str, message: str):
    with pytest.raises(BackendOptionError, match=message):
        open_backend(url)


@pytest.mark.parametrize("args, message", [
    # QEMU reads --opt as -opt (softmmu/vl.c lookup_opt): the double-dash forms passed before
    ("--daemonize", "-daemonize would detach QEMU"),
    ("-daemonize", "would detach QEMU"),
    ("--machine q35", "-machine is set by the backend"),
    ("-M q35", "-M is set by the backend"),
    ("--bios /tmp/x.bin", "-bios is set by the backend"),
    ("--S", "use cpu=stopped"),
    ("-m 64M", "use mem="),
    ("--qtest unix:/x", "-qtest is set by the backend"),
    ("-qtest-log /tmp/log", "set by the backend"),
    ("-machine=q35", "-machine is set by the backend"),  # QEMU has no -opt=value form
    ("-icount=shift=0", "not after '='"),
    ("-runas nobody", "changes the user"),
    ("-chroot /", "changes the user or root"),
    ("-qmp tcp::4444,server=on,wait=off", "second control channel"),
    ("--monitor tcp::4444,server=on,wait=off", "set by the backend"),
    ("-s", "second control channel"),
    ("-gdb tcp::1234", "second control channel"),
    ("-mon chardev=c0", "second control channel"),
    ("-pflash /tmp/fw.bin", "replace the firmware"),
    ("-drive if=pflash,format=raw,file=/tmp/fw.bin", "if=pflash would replace the firmware"),
    ("-readconfig /tmp/x.cfg", "replace the firmware or machine"),
    ("-icount shift=0 --daemonize", "-daemonize"),
])
def test_qemu_args_are_checked_by_canonical_name(args: str, message: str):
    with pytest.raises(BackendOptionError, match=re.escape(message)) as info:
        open_backend("qemu:?args=" + quote(args))
    assert str(info.value).count("\n") == 0


@pytest.mark.parametrize("args", [
    "-icount shift=0,sleep=off", "--icount shift=auto", "-global isa-fdc.dma=5", "-d unimp",
    "-trace i8257*", "-drive if=none,id=d0,file=/tmp/x.img,format=raw", "-name hil", "-pidfile /tmp/q.pid",
])
def test_useful_qemu_args_pass(args: str):
    assert open_backend("qemu:?args=" + quote(args)).config.args == tuple(args.split())


def test_capabilities_follow_the_options_without_starting():
    plain = open_backend("qemu:").capabilities
    assert plain.backend == "qemu" and plain.features == frozenset({Capability.IRQ})
    assert plain.memory_window == (0, 16 << 20) and "not started" in plain.identity
    full = open_backend("qemu:?floppy=generate&sb16=1&mem=64M").capabilities
    assert {Capability.IRQ, Capability.FDC, Capability.SB16} == full.features
    assert full.memory_window == (0, 64 << 20)
    assert Capability.DEVICES not in full.features  # the sim's devices are not QEMU's


async def test_closing_an_unopened_backend_is_harmless():
    be = open_backend("qemu:")
    await be.close()
    with pytest.raises(BackendClosedError):
        await be.inb(0x09)


def test_generated_files():
    bios = halt_firmware()
    assert len(bios) == 0x10000 and bios[0xFFF0:0xFFF4] == bytes.fromhex("faf4ebfd")
    assert bios.count(0) == 0x10000 - 4
    image = floppy_image()
    assert len(image) == 1474560
    assert image[512 * 7 + 3] == (13 * 7 + 3) & 0xFF and floppy_sector(7) == image[512 * 7:512 * 8]


async def test_missing_binary_gives_the_install_hint():
    be = open_backend("qemu:?binary=/nonexistent/qemu-system-x86_64")
    with pytest.raises(QemuNotFoundError, match="apt-get install qemu-system-x86"):
        await be.open()
    ok, why = qemu_available("/nonexistent/qemu-system-x86_64")
    assert not ok and INSTALL_HINT in why


async def test_old_qemu_is_refused_with_the_install_hint(tmp_path: Path):
    binary = fake_qemu(tmp_path, version="6.2.0")
    with pytest.raises(QemuVersionError, match=r"QEMU 6\.2\.0; the qemu backend needs 7\.2 or later; install it with: apt-get"):
        await open_backend(f"qemu:?binary={binary}").open()
    ok, why = qemu_available(binary)
    assert not ok and "older than 7.2" in why


async def test_qemu_that_exits_at_start_reports_its_output(tmp_path: Path):
    binary = fake_qemu(tmp_path, body="echo 'qemu: could not load PC BIOS' >&2; exit 1")
    be = open_backend(f"qemu:?binary={binary}")
    with pytest.raises(QemuStartError, match="exited with status 1; QEMU said: qemu: could not load PC BIOS"):
        await be.open()
    assert be.workdir is None  # the private directory is gone


async def test_qemu_that_never_connects_is_stopped(tmp_path: Path):
    binary = fake_qemu(tmp_path, body="echo waiting >&2; exec sleep 30")
    be = open_backend(f"qemu:?binary={binary}&timeout=0.5")
    with pytest.raises(QemuStartError, match=r"did not connect to the qtest socket within 0\.5 s; QEMU said: waiting"):
        await be.open()
    assert be.pid is not None and wait_gone(be.pid), "the process the backend started was left running"


async def test_a_socket_qemu_cannot_be_given_is_one_start_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A unix socket path longer than sun_path (108 bytes) is refused by bind(): the OSError
    becomes a QemuStartError naming the step (hil.oserrors), and the private directory goes."""
    binary = fake_qemu(tmp_path)
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    be = open_backend(f"qemu:?binary={binary}")
    with pytest.raises(QemuStartError, match=r"^qemu: .*: cannot listen on the qtest socket .*/qtest\.sock: ") as info:
        await be.open()
    assert "\n" not in str(info.value)
    assert be.workdir is None and not list(deep.iterdir()), "the private directory was left behind"


# --- a running QEMU ----------------------------------------------------------------------------------


@pytest.fixture
async def qemu_be():
    need_qemu()
    async with open_backend("qemu:") as be:
        yield be


async def test_start_identity_and_stop():
    need_qemu()
    be = open_backend("qemu:")
    await be.open()
    pid, workdir = be.pid, be.workdir
    assert pid is not None and not gone(pid) and workdir is not None and workdir.is_dir()
    caps = be.capabilities
    assert caps.identity.startswith("qemu 7.") and caps.details["version"].startswith("7.")
    assert be.startup_s is not None and be.startup_s < 5
    await be.close()
    assert wait_gone(pid) and not workdir.exists()
    await be.close()  # idempotent


async def test_reset_state(qemu_be):
    """docs/reference/qemu-qtest.md §8 'Reset state (halt mode)'."""
    got = await qemu_be.execute([In(p) for p in (0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F)])
    assert got == [0x00, 0xFF, 0, 0, 0, 0, 0, 0]
    got = await qemu_be.execute([In(p) for p in (0xD0, 0xD2, 0xD3, 0xDA, 0xDE, 0x10, 0x1F)])
    assert got == [0x00, 0xFF, 0xFF, 0x00, 0x00, 0xFF, 0xFF]


async def test_flip_flop_shared_by_reads_and_writes(qemu_be):
    """docs/reference/qemu-qtest.md §8 'flip-flop' and 'read then write'."""
    seq = [Out(0x0C, 0), Out(0x02, 0x34), Out(0x02, 0x12), Out(0x03, 0x78), Out(0x03, 0x56), Out(0x0C, 0),
           In(0x02), In(0x02), In(0x03), In(0x03)]
    assert await qemu_be.execute(seq) == [0x34, 0x12, 0x78, 0x56]
    await qemu_be.execute([Out(0x0C, 0), In(0x02), Out(0x02, 0xAB)])
    assert await qemu_be.execute([Out(0x0C, 0), In(0x02), In(0x02)]) == [0x34, 0xAB]


async def test_a_big_program_is_pipelined_without_deadlock(qemu_be):
    """50,000 reads in one program: far more than both socket buffers hold (docs/reference/qemu-qtest.md §3.4)."""
    n = 50_000
    t0 = time.perf_counter()
    got = await qemu_be.execute([In(0x09)] * n)
    elapsed = time.perf_counter() - t0
    assert got == [0xFF] * n
    assert elapsed < 10, f"{n} pipelined reads took {elapsed:.1f} s"
    ops = [op for v in range(256) for op in (Out(0x87, v), In(0x87))]  # writes and reads interleaved
    assert await qemu_be.execute(ops) == list(range(256))


async def test_concurrent_programs_do_not_interleave(qemu_be):
    """Each program runs atomically: the flip-flop sequences of two tasks never mix."""

    async def worker(ch_port: int, value: int) -> list[int]:
        out = []
        for _ in range(50):
            got = await qemu_be.execute([Out(0x0C, 0), Out(ch_port, value), Out(ch_port, value + 1),
                                         Out(0x0C, 0), In(ch_port), In(ch_port)])
            out.append(got)
        return out

    a, b = await asyncio.gather(worker(0x00, 0x10), worker(0x06, 0x70))
    assert all(r == [0x10, 0x11] for r in a) and all(r == [0x70, 0x71] for r in b)


async def test_memory_by_base64(qemu_be):
    rng = random.Random(7)
    data = rng.randbytes(1 << 20)  # 1 MiB: many b64write / b64read requests
    await qemu_be.write_mem(0x100000, data)
    assert await qemu_be.read_mem(0x100000, len(data)) == data
    await qemu_be.fill_mem(0x20000, 100, 0xAB)
    assert await qemu_be.read_mem(0x1FFFF, 102) == b"\x00" + b"\xab" * 100 + b"\x00"
    assert await qemu_be.execute([MemRead(0x20000, 0), MemWrite(0x20000, b""), MemFill(0x20000, 0, 1)]) == [b""]
    top = (16 << 20) - 4
    await qemu_be.write_mem(top, b"\x01\x02\x03\x04")
    assert await qemu_be.read_mem(top, 4) == b"\x01\x02\x03\x04"


async def test_refused_before_anything_is_sent(qemu_be):
    client = qemu_be._client
    before = client.sent
    with pytest.raises(WideAccessError, match=r"byte-wide only .*docs/reference/qemu-qtest.md §3.5"):
        await qemu_be.execute([Out(0x0C, 0), In(0x82, 16)])
    with pytest.raises(WideAccessError, match="byte-wide only"):
        await qemu_be.outw(0xC4, 0x1234)
    with pytest.raises(AccessDeniedError, match=r"port 0x03F5 .*allow-list.*floppy="):
        await qemu_be.execute([Out(0x0C, 0), Out(0x3F5, 0x08)])
    with pytest.raises(MemoryRangeError, match="QEMU guest's RAM"):
        await qemu_be.execute([Out(0x0C, 0), MemRead((16 << 20) - 1, 2)])
    with pytest.raises(MemoryRangeError):
        await qemu_be.write_mem(16 << 20, b"x")
    assert client.sent == before, "a refused program sent something"
    assert await qemu_be.inb(0x09) == 0xFF  # QEMU is fine


async def test_settle_op_runs_and_simulator_device_ops_are_refused(qemu_be):
    """Programs may carry a Settle (run here, in wall time) but not the simulator's device
    operations: QEMU has its own devices. Refused before anything is sent."""
    from hil.backends import ops

    if hasattr(ops, "Settle"):
        t0 = time.perf_counter()
        assert await qemu_be.execute([Out(0x87, 0x33), ops.Settle(1e6), In(0x87)]) == [0x33]
        assert time.perf_counter() - t0 < 0.5
    if hasattr(ops, "DevAttach"):
        before = qemu_be._client.sent
        with pytest.raises(UnsupportedOperationError, match="QEMU's own devices"):
            await qemu_be.execute([Out(0x87, 0x44), ops.DevAttach(2, "source", b"x")])
        assert qemu_be._client.sent == before and await qemu_be.inb(0x87) == 0x33


async def test_machine_reset_ports_are_refused_even_when_allowed():
    need_qemu()
    async with open_backend("qemu:?allow=0x60-0x64,0x92,0xCF8-0xCFF") as be:
        for port in (0x64, 0x92, 0xCF9):
            with pytest.raises(AccessDeniedError, match="resets or stops the emulated PC"):
                await be.outb(port, 0xFE)
        assert await be.inb(0x92) in range(256)  # reading is harmless


async def test_wide_pass_hands_word_accesses_to_qemu():
    """docs/reference/qemu-qtest.md §3.5: `outw 0x82` writes 0x82 and 0x83; `inw 0x80` reads 0xFFFF."""
    need_qemu()
    async with open_backend("qemu:?wide=pass") as be:
        await be.outw(0x82, 0x1234)
        assert await be.execute([In(0x82), In(0x83), In(0x82, 16), In(0x80, 16)]) == [0x34, 0x12, 0x1234, 0xFFFF]


async def test_delay_poll_and_settle(qemu_be):
    t0 = time.perf_counter()
    got = await qemu_be.execute([Out(0x87, 0x42), Delay(30_000), In(0x87)])
    assert got == [0x42] and time.perf_counter() - t0 >= 0.03
    got = await qemu_be.execute([Poll(0x87, 0xFF, 0x42, timeout_us=1000), Poll(0x87, 0xFF, 0x43, timeout_us=20_000)])
    assert got == [0x42, 0x42]  # the second timed out and returns the last value read
    t0 = time.perf_counter()
    await qemu_be.settle(1.0)  # everything masked at reset: nothing can move
    assert time.perf_counter() - t0 < 0.5
    await qemu_be.execute([Out(0x0A, 0x02), Out(0x0C, 1)])  # unmask ch2, FF left at 0
    await qemu_be.settle(1.0)
    assert await qemu_be.execute([Out(0x04, 0x11), Out(0x04, 0x22), Out(0x0C, 0), In(0x04), In(0x04)]) == [0x11, 0x22]


async def test_qemu_dying_is_a_backend_error(qemu_be):
    os.kill(qemu_be.pid, signal.SIGKILL)
    with pytest.raises(QemuExitedError, match="exit status -9"):
        for _ in range(100):
            await qemu_be.inb(0x09)
            await asyncio.sleep(0.01)


async def test_cpu_stopped_mode():
    """docs/reference/qemu-qtest.md §1.2: under -S register semantics are identical."""
    need_qemu()
    async with open_backend("qemu:?cpu=stopped") as be:
        assert be.capabilities.details["cpu"] == "stopped"
        assert await be.execute([In(0x09), Out(0x0F, 0xF0), In(0x09), In(0xD2)]) == [0xFF, 0xF0, 0xFF]
        await asyncio.sleep(0.1)
        assert be.irq_count(0) == 0  # the PIT does not run under -S


# --- no orphans -----------------------------------------------------------------------------------

CHILD = """
import asyncio, sys
from hil.backends import open_backend

async def main():
    be = open_backend(sys.argv[2] if len(sys.argv) > 2 else "qemu:")
    await be.open()
    print("QEMU-PID", be.pid, be.workdir, flush=True)
    if sys.argv[1] == "exit-on-input":
        sys.stdin.readline()  # once the test has seen the QEMU processes
        return
    if sys.argv[1] == "exit":
        return  # leaves without closing: the atexit handler must stop QEMU
    if sys.argv[1] == "raise":
        raise RuntimeError("crash with QEMU open")
    await asyncio.sleep(60)

asyncio.run(main())
"""


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "exit", "raise"])
def test_no_orphan_when_the_python_process_goes(tmp_path: Path, how: str):
    """Kill (or leave) the Python process that started QEMU: the QEMU process goes too."""
    need_qemu()
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    mode = "sleep" if how.startswith("SIG") else how
    proc = subprocess.Popen([sys.executable, str(script), mode], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, cwd=ROOT)
    try:
        for raw in proc.stdout:  # type: ignore[union-attr]  (structlog writes to stdout too)
            if raw.startswith("QEMU-PID "):
                break
        else:
            pytest.fail("the child did not start QEMU")
        _, pid_text, workdir_text = raw.split()
        pid, workdir = int(pid_text), Path(workdir_text)
        if how.startswith("SIG"):  # the child sleeps with QEMU running; then it is killed
            assert not gone(pid)
            proc.send_signal(getattr(signal, how))
        proc.wait(timeout=10)
        assert wait_gone(pid), f"QEMU {pid} outlived its parent ({how})"
        if how in ("exit", "raise"):
            assert not workdir.exists(), "the private directory was left behind"
        else:  # a killed interpreter cannot clean up; the next backend to start sweeps it away
            need_qemu()

            async def start_one() -> None:
                async with open_backend("qemu:"):
                    pass

            asyncio.run(start_one())
            assert not workdir.exists(), "a dead interpreter's private directory was not swept"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def running_in_group(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that still run (zombies excluded)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                out.append(int(entry))
    return out


def qemu_children(pid: int) -> list[int]:
    """The real QEMU processes whose parent is ``pid`` (a wrapper's child)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == pid and b"-qtest" in cmd:
                out.append(int(entry))
    return out


def no_exec_wrapper(tmp_path: Path) -> str:
    """A binary= wrapper that runs the real QEMU as its child instead of exec-ing it."""
    real = find_binary()
    assert real is not None
    path = tmp_path / "qemu-wrapper"
    path.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        if [ "$1" = "--version" ]; then exec {real} --version; fi
        {real} "$@"
        echo "wrapper: qemu exited with $?"
        """))
    path.chmod(0o755)
    return str(path)


async def test_a_wrapper_that_does_not_exec_leaves_no_qemu(tmp_path: Path):
    """close() stops the whole process group, not only the wrapper the backend started."""
    need_qemu()
    be = open_backend(f"qemu:?binary={no_exec_wrapper(tmp_path)}")
    await be.open()
    try:
        assert await be.execute([In(0x09)]) == [0xFF]
        wrapper = be.pid
        assert wrapper is not None
        (qemu,) = qemu_children(wrapper)
        assert os.getpgid(qemu) == wrapper  # QEMU shares the wrapper's group
    finally:
        await be.close()
    assert wait_gone(qemu), "the wrapper's QEMU was left running"
    assert running_in_group(wrapper) == []


@pytest.mark.parametrize("how", ["SIGKILL", "exit"])
def test_no_orphan_from_a_wrapper_when_the_python_process_goes(tmp_path: Path, how: str):
    """exit: the atexit handler stops the group. SIGKILL: the wrapper dies with the interpreter
    (PR_SET_PDEATHSIG) but its QEMU child cannot; the next backend to start finds the dead
    interpreter's private directory and stops the QEMU still using its socket."""
    need_qemu()
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    url = f"qemu:?binary={no_exec_wrapper(tmp_path)}"
    proc = subprocess.Popen([sys.executable, str(script), "sleep" if how == "SIGKILL" else "exit-on-input", url],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=ROOT)
    try:
        for raw in proc.stdout:  # type: ignore[union-attr]
            if raw.startswith("QEMU-PID "):
                break
        else:
            pytest.fail("the child did not start QEMU")
        wrapper = int(raw.split()[1])
        (qemu,) = qemu_children(wrapper)
        if how == "SIGKILL":
            proc.send_signal(signal.SIGKILL)
        else:
            proc.stdin.write("go\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
        proc.wait(timeout=10)
        if how == "SIGKILL":
            assert wait_gone(wrapper)

            async def start_one() -> None:
                async with open_backend("qemu:"):
                    pass

            asyncio.run(start_one())
        assert wait_gone(qemu), f"the wrapper's QEMU {qemu} outlived the interpreter ({how})"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
