"""``hil agent`` and ``hil bench``: listen failures are one line and exit 2; bench minimums come
from the link actually in use; every argument has --help text."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hil.agent.client import AgentAccessDenied
from hil.agent.server import AgentCore, start
from hil.allowlist import AllowList
from hil.backends import open_backend
from hil.bench.link import (
    EchoFloor,
    Figure,
    NoFloor,
    SerialFloor,
    bench_backend,
    floor_for,
)
from hil.cli import main
from hil.doctor import run_doctor
from hil.doctor.agent import Env
from hil.errors import BackendError

ROOT = Path(__file__).resolve().parent.parent
WHOLE_MEMORY = [range(1 << 24)]


def hil(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hil", *args], capture_output=True, text=True, timeout=30, cwd=ROOT,
                          check=False)


# --- item 4: listen failures ---------------------------------------------------------------------


def test_listen_on_a_port_in_use_is_one_line_exit_2():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = hil("agent", "--listen", f"tcp://127.0.0.1:{port}")
    assert r.returncode == 2
    assert r.stderr.splitlines() == [(f"hil agent: error: tcp://127.0.0.1:{port}: cannot listen: address already in use; "
                                      f"is another agent running? give another port, or 0 for any free one")]


@pytest.mark.parametrize(("listen", "words"), [
    ("serial:///dev/ttyHIL-nope?baud=3000000", "cannot open: /dev/ttyHIL-nope does not exist"),
    ("/dev/ttyHIL-nope", "does not exist"),
    ("tcp://127.0.0.1:http", "with a port number"),
    ("serial:///dev/null?baud=fast", "baud='fast' is not a number"),
    ("udp://127.0.0.1:1", "listen on tcp://HOST:PORT"),
])
def test_other_listen_failures_are_one_line_exit_2(listen, words):
    r = hil("agent", "--listen", listen)
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hil agent: error: ") and words in lines[0], r.stderr


async def test_start_raises_a_link_error_not_an_oserror():
    async with open_backend("sim") as io:
        core = AgentCore(io, AllowList.default(WHOLE_MEMORY))
        first = await start(core, "tcp://127.0.0.1:0")
        try:
            with pytest.raises(BackendError, match="address already in use"):
                await start(core, first.address)
        finally:
            first.close()


# --- item 7: minimums of the link in use -----------------------------------------------------------


async def test_tcp_bench_is_measured_against_a_loopback_echo_floor():
    """Before: minimums from a 3 Mbaud serial model gave ratios of 0.01-0.3 on TCP."""
    async with open_backend("sim") as io:
        listener = await start(AgentCore(io, AllowList.default(WHOLE_MEMORY)), "tcp://127.0.0.1:0")
        try:
            async with open_backend(f"agent+{listener.address}") as be:
                floor = floor_for(be)
                assert isinstance(floor, EchoFloor) and "loopback" in floor.description
                figures = await bench_backend(be, floor)
        finally:
            listener.close()
    assert [f.name.split(" (")[0] for f in figures] == ["one op", "channel programming", "read all registers",
                                                        "read 64 KiB of memory"]
    for f in figures:
        # the agent's exchange is the echo plus framing and execution: never below it, and the
        # floor is a loopback round trip (well under 3 Mbaud's per-byte cost for 64 KiB, ~220 ms)
        assert f.minimum is not None and 0 < f.minimum < 0.05 and f.ratio > 1, f.line()
        assert f.bytes_out > 0 and f.bytes_in > 0


def test_serial_floors_use_the_urls_baud_and_the_latency_timer(tmp_path):
    ftdi = floor_for(open_backend("agent+ftdi://ftdi:232h/1?baud=3000000"))
    assert isinstance(ftdi, SerialFloor) and (ftdi.baud, ftdi.latency) == (3_000_000, 1e-3)
    node = tmp_path / "ttyUSB3"
    node.write_bytes(b"")
    sysfs = tmp_path / "sys"
    (sysfs / "class" / "tty" / "ttyUSB3" / "device").mkdir(parents=True)
    (sysfs / "class" / "tty" / "ttyUSB3" / "device" / "latency_timer").write_text("16\n")
    usb = floor_for(open_backend(f"agent+serial://{node}?baud=921600"), Env(sysfs=str(sysfs)))
    assert isinstance(usb, SerialFloor) and (usb.baud, usb.latency) == (921600, 0.016)
    assert "16 ms" in usb.description


async def test_serial_floor_is_bytes_at_the_baud_rate_plus_the_latency():
    floor = SerialFloor(1_000_000, 0.001)
    assert await floor.minimum(40, 60) == pytest.approx(0.001 + 100 * 10e-6)
    # pipelined frames: replies flow while later requests go out
    assert await floor.minimum(170, 65536, trips=17) == pytest.approx(0.001 + (10 + 65536) * 10e-6)


async def test_a_pty_has_no_minimum(tmp_path):
    async with open_backend("sim") as io:
        listener = await start(AgentCore(io, AllowList.default(WHOLE_MEMORY)), "pty")
        try:
            be = open_backend(f"agent+serial://{listener.address}?baud=3000000")
            floor = floor_for(be)
        finally:
            listener.close()
    assert isinstance(floor, NoFloor) and await floor.minimum(10, 10) is None
    figure = Figure("x", 0.001, None, 1)
    assert figure.ratio is None and "n/a" in figure.line()


def test_cli_bench_json_against_a_tcp_agent():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "hil", "agent", "--listen", f"tcp://127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        assert proc.stdout is not None and proc.stdout.readline().decode().strip() == f"tcp://127.0.0.1:{port}"
        r = hil("bench", "link", "--backend", f"agent+tcp://127.0.0.1:{port}", "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert "loopback" in out["minimum"] and "baud" not in out["minimum"]
        assert all(f["ratio"] > 1 for f in out["figures"]), out
        # whether the CPU latency request was held depends on the machine (root, /dev/cpu_dma_latency)
        assert isinstance(out["cpu_latency_held"], bool) and out["cpu"].startswith("CPU ")
        r = hil("bench", "link", "--backend", f"agent+tcp://127.0.0.1:{port}", "--cpu-idle", "leave", "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["cpu_latency_held"] is False and "--cpu-idle leave" in out["cpu"]
        r = hil("bench", "link", "--backend", f"agent+tcp://127.0.0.1:{port}", "--baud", "9600")
        assert r.returncode == 2 and r.stderr.startswith("hil bench: error: --baud and --latency-ms")
    finally:
        proc.kill()
        proc.wait()


async def test_doctor_names_no_baud_rate_for_a_tcp_link():
    async with open_backend("sim") as io:
        listener = await start(AgentCore(io, AllowList.default(WHOLE_MEMORY)), "tcp://127.0.0.1:0")
        try:
            report = await run_doctor(f"agent+{listener.address}")
        finally:
            listener.close()
    url = next(r for r in report.results if r.check == "url")
    assert "baud" not in url.message.replace("no baud rate", "") and "TCP" in url.message
    assert report.exit_code == 0


# --- item 17: --help on every argument -------------------------------------------------------------


def test_bench_help_says_what_the_minimum_is(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "loopback echo" in text and "not with --backend" in text


# --- issue 11 items 2, 3: timeouts and limits on the command line ----------------------------------


@pytest.mark.parametrize("option", ["--idle-timeout", "--hello-timeout", "--max-op-time", "--max-program-time"])
def test_time_options_refuse_nonsense_in_one_line(option):
    r = hil("agent", "--listen", "pty", option, "0")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.splitlines()[-1] == f"hil agent: error: argument {option}: '0': give seconds > 0 and at most 4294"


async def test_limits_given_to_hil_agent_are_advertised_and_the_idle_timeout_drops_the_client():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hil", "agent", "--listen", f"tcp://127.0.0.1:{port}",
        "--max-op-time", "0.5", "--max-program-time", "2", "--idle-timeout", "0.3",
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        assert proc.stdout is not None
        assert (await proc.stdout.readline()).decode().strip() == f"tcp://127.0.0.1:{port}"
        async with open_backend(f"agent+tcp://127.0.0.1:{port}") as be:
            assert (be.agent.max_op_us, be.agent.max_program_us) == (500_000, 2_000_000)
            await be.outb(0x81, 0x5A)
            first = be._link
            await asyncio.sleep(0.8)
            assert be._link is None and first is not None  # the agent dropped the silent client
            assert await be.inb(0x81) == 0x5A and be.stats.resets == 0  # reconnected, session resumed
    finally:
        with contextlib.suppress(ProcessLookupError):  # already gone
            proc.kill()
        await proc.wait()


@pytest.mark.parametrize(("io", "devices", "port", "bit7"), [
    ("sim:?floppy=generate", {"fdc"}, 0x3F4, 0x80),  # MSR: RQM, ready for a command
    ("sim:?sb16=1", {"sb16"}, 0x22C, 0x00),  # DSP write status: ready
    ("sim", set(), 0x3F4, None),  # no device: the port is outside the allow-list
])
async def test_hil_agent_advertises_its_io_devices_and_opens_their_ports(io, devices, port, bit7):
    """Issue 13 §5: an agent serving a simulator with the floppy controller or the Sound Blaster 16
    says so (info key `devices`, docs/agent-protocol.md §3), so a host runs the scripts that require
    them, and its default allow-list lets their ports through; without a device neither happens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hil", "agent", "--io", io, "--listen", f"tcp://127.0.0.1:{free}",
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        assert proc.stdout is not None
        assert (await proc.stdout.readline()).decode().strip() == f"tcp://127.0.0.1:{free}"
        async with open_backend(f"agent+tcp://127.0.0.1:{free}") as be:
            assert {c.value for c in be.capabilities.features} & {"fdc", "sb16"} == devices
            if bit7 is not None:
                assert await be.inb(port) & 0x80 == bit7
            else:
                with pytest.raises(AgentAccessDenied, match=r"PORT_DENIED.*0x03F4"):
                    await be.inb(port)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
