"""The ECP example scripts (configs/scripts/board/ecp-*.toml): sim-only or board, never QEMU.

configs/scripts/board/ is the category "a device a bench board has, run on the simulator with that
device or on the board; not QEMU" (QEMU has no ECP: docs/reference/devices.md §1.8). Being one
directory down, these examples stay out of ``configs/scripts/*.toml``, which tests/test_examples.py
(plain ``sim``), tests/test_qemu_scripts.py (sim vs QEMU) and tests/test_agent_link.py run: they
would fail on a backend without the port. They run on ``sim:?ecp=1`` and, unchanged, on a board
through ``devport:`` or an agent with the port's ports in its allow-list: they need no capability a
board lacks (no ``requires``, no irq or device step), so they observe the interrupt as the driver
does, through serviceIntr.

Here: each passes on ``sim:?ecp=1`` and through an in-process agent serving it with exactly the
allow-list entries the README documents; on a machine without the port each fails at its first
port check; and the named tolerances of configs/deviations/ecp-sim-vs-board.toml are each needed,
and enough, against a simulator variant that behaves as a board may (docs/reference/devices.md
§1.2 thresholds, §1.3 cnfgB, §1.5 test-mode DMA, §1.6 the peripheral).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hil.agent.server import AgentCore, start
from hil.allowlist import AllowList
from hil.backends import open_backend
from hil.backends.base import Backend
from hil.backends.sim import SimBackend
from hil.diff import Deviation, DiffReport, compare, load_deviations
from hil.journal import InObs, Observation, RunResult
from hil.runner import check_capabilities, run_script
from hil.script import load_script

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "configs" / "scripts" / "board"
DEVIATIONS = ROOT / "configs" / "deviations" / "ecp-sim-vs-board.toml"
URL = "sim:?ecp=1"
EXAMPLES = sorted(p.name for p in SCRIPTS.glob("ecp-*.toml"))

#: the allow-list a board needs (README "The ECP parallel port"; configs/allowlist.example.toml)
ALLOW_TOML = """
[ports]
dma = true
extra = ["{lo:#x}-{lo7:#x}", "{hi:#x}-{hi2:#x}"]

[memory]
windows = ["0x10000-0x90000"]
"""


def test_the_set_of_ecp_examples():
    assert EXAMPLES == ["ecp-forward-dma.toml", "ecp-probe.toml", "ecp-testmode-dma.toml"]
    assert sorted(p.name for p in SCRIPTS.glob("*.toml")) == EXAMPLES
    assert not list(SCRIPTS.parent.glob("ecp-*.toml")), "board examples live in configs/scripts/board/"


@pytest.mark.parametrize("name", EXAMPLES)
def test_needs_nothing_a_board_lacks(name: str):
    """No requires, no step needing a capability: devport: (the board) accepts it as it is."""
    script = load_script(SCRIPTS / name)
    assert not script.requires
    check_capabilities(script, open_backend("devport:?dry_run=1"))
    assert script.name == name.removesuffix(".toml")
    assert "§" in script.description and "docs/reference/devices.md" in script.description


@functools.cache
def run(name: str, url: str = URL, variables: tuple[tuple[str, int], ...] = ()) -> RunResult:
    async def go() -> RunResult:
        script = load_script(SCRIPTS / name, variables=dict(variables))
        async with open_backend(url) as be:
            return await run_script(script, be)

    return asyncio.run(go())


def seen(o: Observation) -> tuple[object, ...]:
    """What an observation saw (not when): compared between the agent and the direct run."""
    return (o.step, o.op, getattr(o, "value", None), getattr(o, "data", None), o.ok)


def failures(r: RunResult) -> list[tuple[str, str, object, object]]:
    return [(o.step, o.name, o.value, o.expect) for o in r.failures]


@pytest.mark.parametrize("name", EXAMPLES)
def test_passes_on_the_simulator(name: str):
    r = run(name)
    assert r.status == "passed", (r.error, failures(r))
    assert any(o.ok for o in r.observations)


@pytest.mark.parametrize("name", EXAMPLES)
def test_passes_with_the_port_at_0x278_on_dma_1(name: str):
    variables = (("base", 0x278), ("dma", 1))
    r = run(name, "sim:?ecp=0x278&ecp_dma=1&ecp_irq=5", variables)
    if name == "ecp-probe.toml":  # cnfgB is recorded: IRQ 5 (111), DMA 1
        [cfgb] = [o for o in r.observations if o.step == "24"]
        assert cfgb.value & 0x3F == 0x39
    assert r.status == "passed", (r.error, failures(r))


@pytest.mark.parametrize("name", EXAMPLES)
def test_fails_at_its_first_port_check_without_a_port(name: str):
    """On a machine with nothing at 0x378 (plain sim; QEMU likewise) the first failure is a read of
    the port's registers floating to 0xFF, which names the problem."""
    r = run(name, "sim")
    assert r.status == "failed" and r.error is None
    first = r.failures[0]
    assert isinstance(first, InObs) and first.value == 0xFF
    assert 0x378 <= first.port <= 0x37F or 0x778 <= first.port <= 0x77A


def test_probe_records_the_thresholds_depth_and_pword():
    """The recorded ECR reads show serviceIntr coming back on the 8th byte both ways (16 - 8),
    the 16-byte depth and cnfgA's pword 1 (docs/reference/devices.md §1.2, §1.3, §1.5)."""
    r = run("ecp-probe.toml")
    obs = {o.step: o for o in r.observations}

    def first_set(prefix: str, last: int) -> int:
        return next(i for i in range(1, 17) if obs[f"{prefix}[{i}].{last}"].value & 0x04)

    assert first_set("12", 3) == 8 and first_set("19", 2) == 8
    assert obs["9"].name.endswith("FIFO is 16 bytes") and obs["9"].ok
    assert (obs["23"].value >> 4) & 7 == 1
    r4 = run("ecp-probe.toml", "sim:?ecp=1&ecp_threshold=4")
    obs = {o.step: o for o in r4.observations}
    assert first_set("12", 3) == 12 and first_set("19", 2) == 12


def test_forward_dma_reaches_the_peripheral_and_interrupts():
    async def go() -> None:
        async with open_backend(URL) as be:
            assert isinstance(be, SimBackend) and be.ecp is not None
            r = await run_script(load_script(SCRIPTS / "ecp-forward-dma.toml"), be)
            assert r.status == "passed", failures(r)
            pattern = bytes.fromhex("000102030405060708090a0b0c0d0e0ff0e1d2c3b4a5968778695a4b3c2d1e0f")
            assert bytes(be.ecp.peripheral.received) == pattern * 32
            assert be.irq_count(7) >= 1 and be.ecp.tc_seen == 1

    asyncio.run(go())


# --- through an agent serving sim:?ecp=1 with the documented allow-list ------------------------


@contextlib.asynccontextmanager
async def agent_on(io: Backend, allow: AllowList) -> AsyncIterator[Backend]:
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(io)
        core = AgentCore(io, allow)
        listener = await start(core, "tcp://127.0.0.1:0")
        stack.callback(listener.close)
        stack.push_async_callback(core.aclose)
        yield await stack.enter_async_context(open_backend(f"agent+{listener.address}"))


@pytest.mark.parametrize("name", EXAMPLES)
async def test_passes_through_an_agent_with_the_documented_allow_list(name: str, tmp_path: Path):
    base = 0x378
    path = tmp_path / "allow.toml"
    path.write_text(ALLOW_TOML.format(lo=base, lo7=base + 7, hi=base + 0x400, hi2=base + 0x402))
    io = open_backend(URL)
    async with agent_on(io, AllowList.from_toml(path)) as be:
        r = await run_script(load_script(SCRIPTS / name), be)
        assert r.status == "passed", (r.error, failures(r))
        assert r.backend.startswith("agent+tcp://")
        async with open_backend(URL) as sim:
            direct = await run_script(load_script(SCRIPTS / name), sim)
        assert [seen(o) for o in r.observations] == [seen(o) for o in direct.observations]
        if name == "ecp-forward-dma.toml":
            assert be.irq_count(7) >= 1  # the port's interrupt, seen through the agent


async def test_an_agent_without_the_ecp_ports_refuses_before_any_io(tmp_path: Path):
    path = tmp_path / "allow.toml"
    path.write_text('[ports]\ndma = true\nextra = ["0x378-0x37F"]\n[memory]\nwindows = ["0x10000-0x90000"]\n')
    async with agent_on(open_backend(URL), AllowList.from_toml(path)) as be:
        r = await run_script(load_script(SCRIPTS / "ecp-probe.toml"), be)
        assert r.status == "error" and "0x077A" in (r.error or "").upper().replace("0X", "0x")


# --- the named tolerances ---------------------------------------------------------------------------

#: a simulator variant that behaves as a board may, per tolerance
BOARD_LIKE = {
    "ecp-write-threshold": "sim:?ecp=1&ecp_threshold=4",
    "ecp-read-threshold": "sim:?ecp=1&ecp_threshold=4",
    "ecp-cnfgb": "sim:?ecp=1&ecp_dma=1&ecp_irq=5",
    "ecp-test-mode-dma": "sim:?ecp=1&ecp_test_dma=0",
    "ecp-peripheral": "sim:?ecp=1&ecp_stall=1",
}


def relabel(devs: list[Deviation], board: str) -> list[Deviation]:
    """The entries as if ``board`` were the board: between the default port and that variant."""
    return [dataclasses.replace(d, between=(URL, board)) for d in devs]


def diff(name: str, board: str, devs: list[Deviation]) -> DiffReport:
    variables = (("dma", 1),) if "ecp_dma=1" in board else ()
    report = DiffReport(backends=[URL, board])
    compare([run(name), run(name, board, variables)], devs, report)
    return report


def test_the_tolerance_file_names_every_variant():
    devs = load_deviations(DEVIATIONS)
    assert [d.name for d in devs] == list(BOARD_LIKE)
    for d in devs:
        assert d.between == ("intel", "devport") and "docs/reference/devices.md §1." in d.reference
        assert (SCRIPTS / f"{d.script}.toml").exists()


@pytest.mark.parametrize("entry", list(BOARD_LIKE))
def test_each_named_tolerance_is_needed_and_enough(entry: str):
    devs = load_deviations(DEVIATIONS)
    board = BOARD_LIKE[entry]
    [d] = [x for x in devs if x.name == entry]
    name = f"{d.script}.toml"
    with_all = diff(name, board, relabel(devs, board))
    assert with_all.errors == [] and with_all.counted == [], with_all.format()
    assert any(v.tolerated and entry in v.tolerated for v in with_all.divergences), with_all.format()
    without = diff(name, board, relabel([x for x in devs if x.name != entry], board))
    assert without.counted, f"{entry} tolerates nothing {board} shows"
