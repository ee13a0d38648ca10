"""Host <-> agent over real OS links (pty, loopback TCP, pyserial socket:// through a thread),
with fault injection between them and agent restarts (docs/agent-protocol.md §6)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from hil.agent.client import AgentAccessDenied, AgentRefusedError, AgentResetError
from hil.agent.server import AgentCore, start
from hil.allowlist import AllowList
from hil.backends import open_backend
from hil.backends.base import DEVICE_CAPABILITIES, DEVICE_PORTS, Capability
from hil.backends.mock import MockBackend
from hil.backends.recording import RecordingBackend
from hil.diff import compare
from hil.dma import DMA_MODE_READ, IsaDma
from hil.errors import BackendError, UnsupportedOperationError
from hil.ops import Delay, DevAttach, In, MemFill, MemRead, MemWrite, Out, Poll, Settle
from hil.runner import run_script
from hil.script import load_script

SCRIPTS = sorted((Path(__file__).resolve().parent.parent / "configs" / "scripts").glob("*.toml"))
#: every example: the simulator with every device the examples drive (tests/test_examples.py)
EVERY_DEVICE = "sim:?floppy=generate&sb16=1"
WHOLE_MEMORY = [range(0, 1 << 24)]


@contextlib.asynccontextmanager
async def agent(listen: str = "tcp://127.0.0.1:0", io_url: str = "sim", **kw):
    async with open_backend(io_url) as io:
        rec = RecordingBackend(io)
        allow = AllowList.default(WHOLE_MEMORY)
        if io_url != "sim":  # as `hil agent` does: the default list opens the devices' ports
            allow = allow.with_ports([DEVICE_PORTS[c] for c in DEVICE_CAPABILITIES if c in io.capabilities])
        core = AgentCore(rec, allow, **kw)
        listener = await start(core, listen)
        try:
            yield listener, core, rec
        finally:
            listener.close()


def url_for(listener, extra: str = "") -> str:
    if listener.address.startswith("tcp://"):
        return f"agent+{listener.address}{extra}"
    return f"agent+serial://{listener.address}?baud=3000000{extra.replace('?', '&')}"


@pytest.mark.parametrize("listen", ["pty", "tcp://127.0.0.1:0"])
async def test_programs_over_real_links(listen):
    async with agent(listen) as (listener, core, _), open_backend(url_for(listener)) as be:
        payload = bytes(range(256)) * 20
        await be.write_mem(0x40000, payload)  # 5 KiB: split over frames
        assert await be.read_mem(0x40000, len(payload)) == payload
        await be.outb(0x81, 0x5A)
        assert await be.inb(0x81) == 0x5A
        assert be.stats.round_trips >= 3 and core.stats.executed >= 3


async def test_pyserial_url_without_fd_goes_through_an_io_thread():
    """docs/reference/hil-lessons.md §1.5: socket:// has no usable fd for the loop: ThreadLink services it."""
    async with agent() as (listener, _, _):
        host_port = listener.address[len("tcp://"):]
        async with open_backend(f"agent+socket://{host_port}") as be:
            assert type(be._link).__name__ == "ThreadLink"
            await be.outb(0x82, 0x33)
            assert await be.inb(0x82) == 0x33


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
async def test_example_scripts_identical_over_the_agent(script):
    """Issue 13 §5: every example gives the same journal through an agent serving the simulator
    (with the floppy controller and the Sound Blaster 16) as in process: the same status, and
    every observation equal (hil.diff.compare ignores timestamps and the backends' identity),
    the may_differ samples included, since both run in the same virtual time."""
    s = load_script(script)
    async with open_backend(EVERY_DEVICE) as be:
        local = await run_script(s, be)
    async with agent(io_url=EVERY_DEVICE) as (listener, _, _), open_backend(url_for(listener)) as be:
        assert {Capability.FDC, Capability.SB16, Capability.IRQ} <= be.capabilities.features
        remote = await run_script(s, be)
    expected = "failed" if script.name == "failing-expectation.toml" else "passed"
    assert remote.status == local.status == expected, remote.error
    assert remote.error is None
    report = compare([local, remote])
    assert report.divergences == [], report.format()
    assert [(o.step, o.op) for o in remote.observations] == [(o.step, o.op) for o in local.observations]


async def test_the_agent_advertises_only_the_devices_its_io_has():
    """A plain sim has neither device: the host then skips a floppy script instead of sending
    port accesses the allow-list would refuse."""
    async with agent() as (listener, _, _), open_backend(url_for(listener)) as be:
        assert not {Capability.FDC, Capability.SB16} & be.capabilities.features
        assert Capability.IRQ in be.capabilities.features


async def test_allow_list_refusal_is_clear_and_nothing_runs():
    async with agent() as (listener, _, rec), open_backend(url_for(listener)) as be:
        rec.clear()
        with pytest.raises(AgentAccessDenied, match=r"op 1.*PORT_DENIED.*0x03F0"):
            await be.execute([Out(0x81, 1), In(0x3F0)])
        assert rec.trace == []  # validated as a whole before anything ran
        assert await be.inb(0x81) == 0  # the first op did not run either


async def test_token_required_beyond_loopback_and_checked():
    async with open_backend("sim") as io:
        core = AgentCore(io, AllowList.default(WHOLE_MEMORY))
        with pytest.raises(BackendError, match="requires --token"):
            await start(core, "tcp://0.0.0.0:0")
    async with agent(token=b"s3cret") as (listener, _, _):
        with pytest.raises(AgentRefusedError, match="AUTH"):
            async with open_backend(url_for(listener)):
                pass
        async with open_backend(url_for(listener, "?token=s3cret")) as be:
            assert await be.inb(0x08) == 0


async def test_second_tcp_client_is_told_busy():
    async with agent() as (listener, _, _), open_backend(url_for(listener)):
        with pytest.raises(AgentRefusedError, match="BUSY"):
            async with open_backend(url_for(listener, "?timeout=0.3&retries=0")):
                pass


class FaultyProxy:
    """A loopback TCP relay that drops, corrupts, duplicates and delays what passes through."""

    def __init__(self, target: tuple[str, int], seed: int, rate: float, *, per_byte: bool = False) -> None:
        self.target, self.rng, self.rate, self.per_byte = target, random.Random(seed), rate, per_byte
        self.faults = {"drop": 0, "corrupt": 0, "duplicate": 0, "delay": 0}

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return f"tcp://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _pipe(self, reader, writer) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(64):
                if self.per_byte:
                    writer.write(self._byte_errors(data))
                    await writer.drain()
                    continue
                for chunk in [data[i : i + 16] for i in range(0, len(data), 16)]:
                    r = self.rng.random()
                    if r < self.rate:
                        self.faults["drop"] += 1
                        continue
                    if r < 2 * self.rate:
                        self.faults["corrupt"] += 1
                        b = bytearray(chunk)
                        b[self.rng.randrange(len(b))] ^= 1 << self.rng.randrange(8)
                        chunk = bytes(b)
                    elif r < 3 * self.rate:
                        self.faults["duplicate"] += 1
                        chunk = chunk + chunk
                    elif r < 4 * self.rate:
                        self.faults["delay"] += 1
                        await asyncio.sleep(0.01)
                    writer.write(chunk)
                    await writer.drain()
        writer.close()

    def _byte_errors(self, data: bytes) -> bytes:
        """Each byte, with probability ``rate``, is lost, has one bit flipped or arrives twice
        (a third of the rate each): a noisy UART rather than a lossy packet network."""
        out = bytearray()
        for byte in data:
            r = self.rng.random()
            if r < self.rate / 3:
                self.faults["drop"] += 1
            elif r < 2 * self.rate / 3:
                self.faults["corrupt"] += 1
                out.append(byte ^ (1 << self.rng.randrange(8)))
            elif r < self.rate:
                self.faults["duplicate"] += 1
                out += bytes((byte, byte))
            else:
                out.append(byte)
        return bytes(out)

    async def _client(self, reader, writer) -> None:
        up_r, up_w = await asyncio.open_connection(*self.target)
        await asyncio.gather(self._pipe(reader, up_w), self._pipe(up_r, writer))

    def close(self) -> None:
        self.server.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_fault_injection_never_a_wrong_value_never_twice(seed):
    """Drop, corrupt, duplicate and delay bytes between host and agent: every read is right,
    every program runs exactly once, in order (§6)."""
    async with agent() as (listener, core, rec):
        host, port = listener.address[len("tcp://"):].rsplit(":", 1)
        proxy = FaultyProxy((host, int(port)), seed, rate=0.03)
        address = await proxy.start()
        try:
            async with open_backend(f"agent+{address}?timeout=0.04&retries=60") as be:
                rec.clear()
                for i in range(40):
                    value = (i * 37 + seed) & 0xFF
                    blob = bytes([(value + k) & 0xFF for k in range(40)])
                    got = await be.execute([Out(0x81, value), In(0x81), MemWrite(0x50000 + i * 64, blob),
                                            MemRead(0x50000 + i * 64, 40)])
                    assert got == [value, blob]
        finally:
            proxy.close()
        writes = [e.op.value for e in rec.trace if isinstance(e.op, Out)]
        assert writes == [(i * 37 + seed) & 0xFF for i in range(40)], "a program ran twice or out of order"
        assert sum(proxy.faults.values()) > 0
        assert be.stats.retries > 0 or core.stats.replayed > 0


@dataclass
class FaultRun:
    completed: bool
    wrong_values: int
    doubled_writes: int
    error: str = ""


async def fault_run(rate: float, seed: int, *, per_byte: bool = False) -> FaultRun:
    """One run through the fault proxy: 20 small programs (OUT, IN, 40-byte write and read back)
    and a 4 KiB write read back, at ``rate`` faults per 16-byte chunk and kind (drop, corrupt,
    duplicate, delay), or with ``per_byte`` at ``rate`` errors per byte. Wrong values and programs
    that ran twice are counted, never tolerated."""
    async with agent() as (listener, _, rec):
        host, port = listener.address[len("tcp://"):].rsplit(":", 1)
        proxy = FaultyProxy((host, int(port)), seed, rate, per_byte=per_byte)
        address = await proxy.start()
        rng = random.Random(seed)
        wrong, expected = 0, []
        big = rng.randbytes(4096)
        try:
            async with open_backend(f"agent+{address}?timeout=0.04&retries=60") as be:
                rec.clear()
                for i in range(20):
                    value = (i * 37 + seed) & 0xFF
                    blob = bytes([(value + k) & 0xFF for k in range(40)])
                    expected.append(value)
                    got = await be.execute([Out(0x81, value), In(0x81), MemWrite(0x50000 + i * 64, blob),
                                            MemRead(0x50000 + i * 64, 40)])
                    wrong += got != [value, blob]
                await be.write_mem(0x60000, big)
                wrong += await be.read_mem(0x60000, len(big)) != big
        except BackendError as e:
            return FaultRun(False, wrong, 0, str(e))
        finally:
            proxy.close()
        writes = [e.op.value for e in rec.trace if isinstance(e.op, Out)]
        big_bytes = sum(len(e.op.data) for e in rec.trace if isinstance(e.op, MemWrite) and e.op.addr >= 0x60000)
        doubled = (len(writes) - len(expected)) + (big_bytes - len(big)) // 1
        return FaultRun(True, wrong + (writes != expected), max(0, doubled))


async def test_frames_shrink_under_errors_and_runs_complete():
    """Issue 11 item 9: at 5 % faults per chunk a frame of 4 KiB never arrives whole; the frame size
    follows the error rate, so runs with a 4 KiB transfer complete, still exactly once."""
    runs = [await fault_run(0.05, seed) for seed in (11, 12, 13)]
    assert [r.wrong_values for r in runs] == [0, 0, 0] and [r.doubled_writes for r in runs] == [0, 0, 0]
    assert sum(r.completed for r in runs) >= 2, [r.error for r in runs]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _spawn_agent(port: int, *options: str) -> asyncio.subprocess.Process:
    """``hil agent OPTIONS --listen tcp://127.0.0.1:PORT`` in a child process, once it listens."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hil", "agent", *options, "--listen", f"tcp://127.0.0.1:{port}",
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    line = await proc.stdout.readline()
    assert line.decode().strip() == f"tcp://127.0.0.1:{port}"
    return proc


async def _stop(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        proc.kill()
    await proc.wait()


async def test_agent_killed_and_restarted_is_detected_and_restored():
    """§6: a new boot nonce -> AgentResetError for the program in flight, then the driver layer's
    shadow is restored onto the fresh controller before anything else runs."""
    port = _free_port()
    proc = await _spawn_agent(port)
    try:
        async with open_backend(f"agent+tcp://127.0.0.1:{port}?timeout=0.5&retries=8") as be:
            dma = IsaDma(be)
            await dma.request_dma(2, "floppy")
            await dma.program(2, DMA_MODE_READ, 0x123400, 0x2400)
            first = be.boot_nonce
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            proc = await _spawn_agent(port)
            with pytest.raises(AgentResetError, match="restarted"):
                await be.inb(0x08)
            assert be.boot_nonce != first and be.stats.resets == 1
            await be.outb(0x0C, 0)  # the restore has run: ch2 reads back as programmed
            lo, hi = await be.inb(0x04), await be.inb(0x04)
            clo, chi = await be.inb(0x05), await be.inb(0x05)
            assert (lo | hi << 8, clo | chi << 8) == (0x3400, 0x23FF)
            assert await be.inb(0x81) == 0x12
            assert await be.inb(0x0F) == 0b1011  # ch2 unmasked again, the rest masked
    finally:
        await _stop(proc)


async def test_devices_need_the_feature():
    """A DEVICES op to an agent whose I/O has no simulated devices is refused as an unsupported
    operation, as on every backend, before the I/O sees any op of the program."""
    seen = []
    io = MockBackend(lambda op: seen.append(op), ops=(Out, In, MemWrite, MemRead, MemFill, Delay, Poll, Settle),
                     memory_window=(0, 1 << 24))
    async with io:
        core = AgentCore(io, AllowList.default(WHOLE_MEMORY))
        listener = await start(core, "tcp://127.0.0.1:0")
        try:
            async with open_backend(url_for(listener)) as be:
                assert "devices" not in {c.value for c in be.capabilities.features}
                with pytest.raises(UnsupportedOperationError, match="at op 1: UNSUPPORTED") as err:
                    await be.execute([Out(0x81, 0x12), DevAttach(2, "source", b"x")])
                assert type(err.value) is UnsupportedOperationError and seen == []  # the host refused, from HELLO
                await be.outb(0x81, 0x12)
                assert seen == [Out(0x81, 0x12)]  # the same I/O runs what it supports
        finally:
            listener.close()



async def test_ftdi_style_port_is_read_through_its_device_and_latency_is_fixed(monkeypatch):
    """docs/reference/hil-lessons.md §1.4: dynamic latency off, latency timer 1 ms, bulk reads instead of pyftdi's
    10 ms-sleeping read(). A stand-in for pyftdi's serial port records what the link does to it."""
    import serial

    from hil.agent import links

    calls: list[tuple] = []

    class FakeFtdi:
        def __init__(self) -> None:
            self.chunks = [b"\x01\x02", b"", b"\x03"]

        def set_dynamic_latency(self, *a):
            calls.append(("dynamic", a))

        def set_latency_timer(self, ms):
            calls.append(("latency", ms))

        def read_data(self, size):
            calls.append(("read_data", size))
            return self.chunks.pop(0) if self.chunks else b""

    class FakePort:
        def __init__(self) -> None:
            self.udev = FakeFtdi()

        def read(self, n):  # must not be used: it would sleep 10 ms between polls
            raise AssertionError("pyftdi read() used")

        def write(self, data):
            calls.append(("write", bytes(data)))

        def flush(self):
            pass

        def cancel_read(self):
            pass

        def close(self):
            calls.append(("close",))

    monkeypatch.setattr(serial, "serial_for_url", lambda url, **kw: FakePort())
    link = await links.open_link("ftdi://ftdi:232h/1", baud=3_000_000)
    assert ("dynamic", (0, 0, 0)) in calls and ("latency", 1) in calls
    got = b""
    while len(got) < 3:
        got += await link.read()
    assert got == b"\x01\x02\x03"
    await link.write(b"xy")
    await link.close()
    assert ("write", b"xy") in calls and calls[-1] == ("close",)
    assert any(c[0] == "read_data" and c[1] >= 4096 for c in calls)


async def test_agent_with_devport_io_takes_the_window_from_the_url():
    """`hil agent --io devport:…` on a target: same backend, same allow-list (dry run here: no
    /dev/port on a test machine); the memory window comes from the devport URL."""
    port = _free_port()
    proc = await _spawn_agent(port, "--io", "devport:?dry_run=1&window=0x10000-0x90000")
    try:
        async with open_backend(f"agent+tcp://127.0.0.1:{port}") as be:
            assert be.capabilities.memory_window == (0x10000, 0x90000)
            assert await be.inb(0x08) == 0xFF  # dry run: reads float
            with pytest.raises(AgentAccessDenied, match="MEM_DENIED"):
                await be.read_mem(0x90000, 1)
    finally:
        await _stop(proc)


async def test_capabilities_follow_the_advertised_features():
    """A sim agent offers devices and virtual time; a devport-like one (no devices, wall time)
    maps to real_timing, so IsaDma counts its timeouts in wall time."""
    async with agent() as (listener, _, _), open_backend(url_for(listener)) as be:
        names = {c.value for c in be.capabilities.features}
        assert {"devices", "dreq", "virtual_time", "reset_detect"} <= names and "real_timing" not in names

    class WallClock(RecordingBackend):
        @property
        def capabilities(self):
            caps = self.inner.capabilities
            return type(caps)(caps.backend, caps.identity, frozenset(), caps.memory_window)

    async with open_backend("sim") as io:
        listener = await start(AgentCore(WallClock(io), AllowList.default(WHOLE_MEMORY)), "tcp://127.0.0.1:0")
        try:
            async with open_backend(url_for(listener)) as be:
                assert {c.value for c in be.capabilities.features} == {"reset_detect", "real_timing"}
        finally:
            listener.close()


async def test_programs_failed_by_a_reset_see_the_new_agent_named():
    """The programs in flight fail with AgentResetError as soon as the new agent's HELLO_REPLY is
    read, a round trip before the new session exists (a second HELLO); a program woken by that
    failure may look at the backend at once (the VM reset test did, on a loaded machine), and
    the backend names the new agent by then."""
    port = _free_port()
    proc = await _spawn_agent(port)
    try:
        async with open_backend(f"agent+tcp://127.0.0.1:{port}?timeout=0.5&retries=8") as be:
            await be.outb(0x0C, 0)
            first = be.boot_nonce
            named_when_failed = []
            fail_pending = be._fail_pending  # type: ignore[attr-defined]  # the agent backend's

            def recording(*args: object) -> None:
                named_when_failed.append(be.boot_nonce)
                fail_pending(*args)

            be._fail_pending = recording  # type: ignore[attr-defined]  # open_backend is typed as a Backend
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            proc = await _spawn_agent(port)
            with pytest.raises(AgentResetError, match="restarted"):
                await be.write_mem(0x50000, bytes(32768))
            assert named_when_failed and named_when_failed[0] == be.boot_nonce != first
            assert be.stats.resets == 1  # type: ignore[attr-defined]  # the agent backend's
    finally:
        await _stop(proc)


async def test_restart_mid_session_one_reconnect_reset_detected_and_restored():
    """Issue 11 item 7: after SIGKILL and restart a 32 KiB write (8+ frames) reconnects once for
    the whole backend, not once per frame; the old link is closed; the reset is reported as
    AgentResetError after IsaDma restored its shadow, and later programs run (no BUSY)."""
    from hil.agent.client import AgentBackend
    from hil.agent.links import open_link

    port = _free_port()
    proc = await _spawn_agent(port)
    links = []

    async def counted():
        link = await open_link(f"tcp://127.0.0.1:{port}")
        links.append(link)
        return link

    be = AgentBackend(f"agent+tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{port}", timeout=0.5, retries=8,
                      link_factory=counted)
    try:
        async with be:
            dma = IsaDma(be)
            await dma.request_dma(2, "floppy")
            await dma.program(2, DMA_MODE_READ, 0x123400, 0x2400)
            first = be.boot_nonce
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            proc = await _spawn_agent(port)
            with pytest.raises(AgentResetError, match="restarted"):
                await be.write_mem(0x50000, bytes(32768))
            # the frames in flight learn of the reset with the backend already naming the new agent
            assert be.boot_nonce != first
            assert len(links) == 2 and be.stats.resets == 1
            assert all(link._writer.is_closing() for link in links[:-1])  # the old link is not leaked
            await be.outb(0x0C, 0)  # restored: ch2 reads back as programmed
            lo, hi = await be.inb(0x04), await be.inb(0x04)
            assert lo | hi << 8 == 0x3400 and await be.inb(0x81) == 0x12
            await be.write_mem(0x50000, bytes(range(256)) * 128)  # and the next program runs: no BUSY
            assert await be.read_mem(0x50000, 32768) == bytes(range(256)) * 128
            assert len(links) == 2
    finally:
        await _stop(proc)
