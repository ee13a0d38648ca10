"""Agent sessions: each new client starts from a defined state unless it asks to keep it
(docs/agent-protocol.md §3), and an agent run's journal names the agent's I/O backend and profile
so known-deviation lists match it like the same backend in process."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hil.agent.client import AgentRefusedError
from hil.agent.protocol import Feature, Frame, Hello, HelloFlag, HelloReply, MsgType
from hil.agent.server import AgentCore, start
from hil.allowlist import AllowList
from hil.backends import open_backend
from hil.diff import compare, load_deviations
from hil.ops import DevAttach, DevState, In, MemRead, MemWrite, Out
from hil.runner import run_script
from hil.script import load_script

ROOT = Path(__file__).resolve().parent.parent
WHOLE_MEMORY = [range(1 << 24)]

#: a script that expects the power-on state and leaves something else behind
FRESH = """
[script]
name = "fresh-agent"
description = "Expects the power-on state (DMA1 masked, memory clear); leaves DMA1 unmasked and bytes written."

[[step]]
op = "in"
name = "power-on: all DMA1 channels masked"
port = "dma1.all_mask"
expect = 0x0F

[[step]]
op = "read"
name = "power-on: memory clear"
addr = 0x20000
length = 4
expect_hex = "00 00 00 00"

[[step]]
op = "out"
name = "unmask all of DMA1, and leave it so"
port = "dma1.clear_mask"
value = 0

[[step]]
op = "write"
name = "leave bytes behind"
addr = 0x20000
hex = "de ad be ef"
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def cli_agent(*args: str):
    """``hil agent`` as a user starts it; yields its address."""
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "hil", "agent", *args, "--listen",
                                                f"tcp://127.0.0.1:{port}", stdout=subprocess.PIPE,
                                                stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        assert proc.stdout is not None
        assert (await proc.stdout.readline()).decode().strip() == f"tcp://127.0.0.1:{port}"
        yield f"tcp://127.0.0.1:{port}"
    finally:
        proc.kill()
        await proc.wait()


async def test_two_consecutive_clients_run_the_same_script_and_both_pass(tmp_path):
    path = tmp_path / "fresh.toml"
    path.write_text(FRESH)
    script = load_script(path)
    async with cli_agent() as address:
        statuses = []
        for _ in range(3):
            async with open_backend(f"agent+{address}") as be:
                result = await run_script(script, be)
                statuses.append(result.status)
                assert be.capabilities.details["session"] == "fresh"
        assert statuses == ["passed"] * 3, result.failures
        async with open_backend(f"agent+{address}?keep=1") as be:  # asked to keep: sees what the last one left
            kept = await run_script(script, be)
            assert be.capabilities.details["session"] == "kept"
    assert kept.status == "failed" and {o.step for o in kept.failures} == {"1", "2"}


@contextlib.asynccontextmanager
async def fresh_agent():
    io = open_backend("sim")
    await io.open()
    core = AgentCore(io, AllowList.default(WHOLE_MEMORY), fresh_io=lambda: open_backend("sim"))
    listener = await start(core, "tcp://127.0.0.1:0")
    try:
        yield core, f"agent+{listener.address}"
    finally:
        listener.close()
        await core.aclose()


async def test_new_session_starts_on_fresh_io_devices_detached():
    async with fresh_agent() as (core, url):
        async with open_backend(url) as be:
            assert Feature.SESSION_RESET in be.agent.features
            await be.execute([DevAttach(2, "source", b"abc"), Out(0x0A, 2), MemWrite(0x30000, b"\x55")])
            first_io = core.io
        async with open_backend(url) as be:
            assert core.io is not first_io and first_io.closed  # the old I/O is closed, not leaked
            with pytest.raises(AgentRefusedError, match=r"UNSUPPORTED.*no device attached"):
                await be.execute([DevState(2, 0)])
            assert await be.execute([MemRead(0x30000, 1), In(0x0F)]) == [b"\x00", 0x0F]


async def test_keep_flag_keeps_devices_and_registers():
    async with fresh_agent() as (_, url):
        async with open_backend(url) as be:
            await be.execute([DevAttach(2, "source", b"abc", dreq=False), Out(0x0E, 0), MemWrite(0x30000, b"\x55")])
        async with open_backend(url + "?keep=1") as be:
            state, mem, mask = await be.execute([DevState(2, 0), MemRead(0x30000, 1), In(0x0F)])
            assert state.kind == "source" and mem == b"\x55" and mask == 0


async def test_a_reconnect_of_the_same_session_is_not_reset():
    """The same host nonce (a TCP reconnect mid-run) keeps its session, state and replay cache."""
    async with fresh_agent() as (core, _):
        await core.handle(Frame(MsgType.HELLO, 0, Hello(7).encode()))
        await core.handle(Frame(MsgType.EXEC, 0, b"\x01\x81\x00\x42"))  # OUT8 0x81 <- 0x42
        io = core.io
        await core.handle(Frame(MsgType.HELLO, 1, Hello(7).encode()))
        assert core.io is io and await io.inb(0x81) == 0x42
        await core.handle(Frame(MsgType.HELLO, 1, Hello(8).encode()))  # another host
        assert core.io is not io and await core.io.inb(0x81) == 0


async def test_an_unused_agent_is_not_reopened_for_its_first_session():
    async with fresh_agent() as (core, url):
        io = core.io
        async with open_backend(url):
            pass
        async with open_backend(url):
            assert core.io is io  # nothing ran: it is still in its start state


async def test_agent_without_fresh_io_says_its_state_is_shared():
    async with open_backend("sim") as io:
        listener = await start(AgentCore(io, AllowList.default(WHOLE_MEMORY)), "tcp://127.0.0.1:0")
        try:
            async with open_backend(f"agent+{listener.address}") as be:
                assert Feature.SESSION_RESET not in be.agent.features
                assert be.capabilities.details["session"] == "shared"
        finally:
            listener.close()


def test_hello_keep_flag_is_an_optional_trailing_byte():
    plain = Hello(0x11223344, 4096, b"", "hil")
    keep = Hello(0x11223344, 4096, b"", "hil", HelloFlag.KEEP)
    assert keep.encode() == plain.encode() + b"\x01"  # a plain HELLO is unchanged for every v1 agent
    assert Hello.decode(keep.encode()).flags == HelloFlag.KEEP
    assert Hello.decode(plain.encode()).flags == HelloFlag(0)
    assert Hello.decode(keep.encode() + b"\x99\x98").flags == HelloFlag.KEEP  # later fields: ignored


def test_hello_reply_info_block_rides_on_its_feature_bit():
    base = HelloReply(1, "a", "0", 4096, 8, 4096, Feature.POLL, (), ())
    with_info = HelloReply(1, "a", "0", 4096, 8, 4096, Feature.POLL | Feature.INFO, (), (),
                           (("io", "sim"), ("profile", "qemu")))
    assert with_info.encode().endswith(b"\x00\x02\x02io\x03sim\x07profile\x04qemu")  # after n_mem = 0
    assert HelloReply.decode(with_info.encode()) == with_info
    assert HelloReply.decode(with_info.encode()).info_value("profile") == "qemu"
    assert HelloReply.decode(base.encode()).info == ()


# --- item 9: identity and known deviations -----------------------------------------------------


async def test_agent_identity_names_its_io_and_profile():
    async with cli_agent("--io", "sim:?profile=qemu") as address, open_backend(f"agent+{address}") as be:
        caps = be.capabilities
    assert caps.identity == f"agent hil-agent {be.agent.agent_version} io=sim profile=qemu via {address}"
    assert caps.details["io"] == "sim" and caps.details["profile"] == "qemu"


async def test_known_deviations_match_an_agent_run_like_the_backend_it_serves():
    """sim vs an agent serving sim:?profile=qemu tolerates exactly what sim vs sim:?profile=qemu does."""
    deviations = load_deviations(ROOT / "configs" / "deviations" / "intel-vs-qemu.toml")
    script = load_script(ROOT / "configs" / "scripts" / "qemu-register-quirks.toml")
    async with open_backend("sim") as be:
        intel = await run_script(script, be)
    async with open_backend("sim:?profile=qemu") as be:
        qemu = await run_script(script, be)
    io = open_backend("sim:?profile=qemu")
    await io.open()
    core = AgentCore(io, AllowList.default(WHOLE_MEMORY))
    listener = await start(core, "tcp://127.0.0.1:0")
    try:
        async with open_backend(f"agent+{listener.address}") as be:
            remote = await run_script(script, be)
    finally:
        listener.close()
        await core.aclose()
    assert {"qemu", "agent:qemu", "sim:qemu"} <= remote.tags
    local = compare([intel, qemu], deviations)
    agent = compare([intel, remote], deviations)

    def tolerated(report):
        return sorted((d.step, d.op, d.tolerated) for d in report.divergences if d.tolerated)

    assert tolerated(local), "the comparison must exercise some known deviations"
    assert tolerated(agent) == tolerated(local)
    assert agent.counted == [] == local.counted, agent.format()
