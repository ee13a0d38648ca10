"""The register tools of the ``hil`` command: ``demo``, ``regs``, ``peek``, ``poke`` (and the
--help of ``backends`` and ``doctor``): the demo over a real agent, the register decode per
backend profile, register names, quiet sweeps, and one hex format.

Expected decodes come from the references, not from the code: Linux's ``get_dma_residue``
arithmetic (docs/reference/linux-isa-dma.md §1.3), which ports read back what on Intel chipsets
and on QEMU (docs/reference/8237.md §2.9, §2.11, §2.12, §5; docs/reference/qemu-qtest.md §8).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import pytest
import structlog

from hil.backends import _REGISTRY
from hil.backends.base import Backend, Capabilities
from hil.backends.qemu import qemu_available
from hil.backends.recording import RecordingBackend
from hil.backends.sim import SimBackend
from hil.cli import build_parser, main
from hil.cli.registers import port_arg
from hil.ops import ALL_OPS, DevAttach, In, Op, Out, Result
from hil.ports import port_names
from hil.regs import Profile, read_registers, residue
from hil.runner import run_script
from hil.script import load_script
from hil.testing import require

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "configs" / "scripts"
QEMU_PROFILE = "sim:?profile=qemu"


def hil(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def agent_url() -> Iterator[str]:
    """A real agent process serving the simulator on loopback TCP, as README shows it."""
    proc = subprocess.Popen([sys.executable, "-m", "hil", "agent", "--io", "sim", "--listen", "tcp://127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().strip()
        assert address.startswith("tcp://127.0.0.1:"), address
        yield f"agent+{address}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --- item 3: the demo on any backend with `devices`, through the device ops --------------------------


def test_demo_over_an_agent_serving_sim(capsys: pytest.CaptureFixture[str], agent_url: str) -> None:
    """Was AttributeError: 'AgentBackend' object has no attribute 'machine'."""
    for _ in range(2):  # and again on the same agent
        code, out, err = hil(capsys, "demo", "--json", "--bytes", "700", "-b", agent_url)
        assert code == 0, err
        data = json.loads(out)
        assert (data["data_ok"], data["tc"], data["residue"], data["device_sent"]) == (True, True, 0, 700)
        assert data["backend"].startswith("agent ")
    code, out, err = hil(capsys, "demo", "-b", agent_url)
    assert code == 0 and "terminal count: yes; residue 0 bytes" in out and "match what the device sent" in out


class Opaque(Backend):
    """The simulator behind nothing but the backend interface: no ``machine`` to reach into."""

    scheme = "opaque"
    OPS = ALL_OPS

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._inner = SimBackend()

    async def _open(self) -> None:
        await self._inner.open()

    @property
    def capabilities(self) -> Capabilities:
        return self._inner.capabilities

    async def _execute(self, ops: Sequence[Op]) -> list[Result]:
        return await self._inner.execute(ops)

    async def _settle(self, timeout_s: float | None) -> None:
        await self._inner.settle(timeout_s)


def test_demo_needs_no_backend_internals(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(_REGISTRY, "opaque", lambda url: Opaque(url.raw))
    code, out, err = hil(capsys, "demo", "--bytes", "64", "-b", "opaque:")
    assert code == 0, err
    assert "terminal count: yes; residue 0 bytes" in out


def test_demo_without_devices_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = hil(capsys, "demo", "-b", "devport:?dry_run=1")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("hil demo: error: backend devport:?dry_run=1 lacks capability 'devices'")


# --- item 10: register decode --------------------------------------------------------------------------


def test_residue_is_linux_get_dma_residue() -> None:
    """docs/reference/linux-isa-dma.md §1.3 worked examples: unsigned short count + 1, doubled on channels 4-7."""
    assert residue(1, 0xFFFF) == 0  # TC passed: the wrap gives 0
    assert residue(5, 0x1FFF) == 0x4000
    assert residue(2, 0x23FF) == 0x2400
    assert residue(0, 0x0000) == 1  # "may return 1" before the channel was used
    assert residue(6, 0x0000) == 2
    assert residue(7, 0xFFFF) == 0


B = TypeVar("B", bound=Backend)


async def _opened(backend: B) -> B:
    await backend.open()
    return backend


async def _after_tc(url_profile: str = "intel") -> SimBackend:
    """Channel 2 moved 16 bytes to TC; nothing has read the status yet."""
    be = await _opened(SimBackend(profile=url_profile))
    await be.execute([DevAttach(2, "source", bytes(16)), Out(0x0A, 0x06), Out(0x0C, 0), Out(0x0B, 0x46),
                      Out(0x81, 0x02), Out(0x04, 0x00), Out(0x04, 0x34), Out(0x05, 0x0F), Out(0x05, 0x00),
                      Out(0x0A, 0x02)])
    await be.settle()
    return be


async def test_dump_after_tc_says_zero_left_and_that_it_cleared_tc() -> None:
    dump = await read_registers(await _after_tc())
    text = dump.format()
    ch2 = next(line for line in text.splitlines() if line.strip().startswith("ch2:"))
    assert "current count 0xFFFF" in ch2 and "residue 0 bytes" in ch2
    assert "65536" not in text
    assert "TC 2;" in text
    assert text.splitlines()[-1] == "(the status read cleared the TC bits shown above)"
    again = json.loads(json.dumps((await read_registers(await _after_tc())).to_json()))
    assert again["tc_cleared"] is True and again["controllers"][0]["channels"]["2"]["residue"] == 0


async def test_dump_without_tc_has_no_tc_footnote_and_singular_residue() -> None:
    text = (await read_registers(await _opened(SimBackend()))).format()
    assert "cleared the TC bits" not in text
    assert "1 bytes" not in text
    assert "ch0: current address 0x0000  current count 0x0000 (residue 1 byte)" in text
    assert "ch5: current address 0x0000  current count 0x0000 (residue 2 bytes)" in text


async def test_dump_labels_write_only_ports_per_profile() -> None:
    """Intel: the mask reads at 0x0F/0xDE, 0x09/0xD2 are write-only. QEMU: the mask reads at 0x09/0xD2
    (0xFF after reset), 0x0F/0xDE read 0, there is no temporary register."""
    intel = await read_registers(await _opened(SimBackend()))
    text = intel.format()
    assert intel.profile is Profile.INTEL
    assert "mask@0x0F 0x0F (masked 0,1,2,3)" in text and "0x09 write-only" in text
    assert "mask@0x09" not in text and "mask@0xD2" not in text
    assert "mask@0xDE 0x0E (masked 5,6,7)" in text and "0xD2 write-only" in text  # BIOS unmasked the cascade
    qemu = await read_registers(await _opened(SimBackend(profile="qemu")))
    text = qemu.format()
    assert "mask@0x09 0xFF" in text and "mask@0xD2 0xFF" in text
    assert "0x0F write-only" in text and "mask@0x0F" not in text and "temp none" in text
    data = json.loads(json.dumps(qemu.to_json()))  # as --json prints it
    assert data["profile"] == "qemu" and data["controllers"][0]["mask"] == 0xFF
    assert data["controllers"][0]["temp"] is None


async def test_dump_reads_only_the_ports_the_profile_defines() -> None:
    """The sweep itself never reads a write-only port or one the backend does not decode."""
    for profile, unread in (("intel", {0x09, 0xD2}), ("qemu", {0x0F, 0xDE, 0x0D, 0xDA, 0x80, 0x84, 0x8E})):
        rec = RecordingBackend(await _opened(SimBackend(profile=profile)))
        await read_registers(rec)
        read = {entry.op.port for entry in rec.trace if isinstance(entry.op, In)}
        assert read and not read & unread, (profile, sorted(read & unread))


def test_regs_over_an_agent_decodes_as_the_profile_it_serves(capsys: pytest.CaptureFixture[str],
                                                               agent_url: str) -> None:
    """The agent names its I/O backend's profile in HELLO, so the dump decodes the intel way."""
    code, out, _ = hil(capsys, "regs", "-b", agent_url)
    assert code == 0
    assert "mask@0x0F 0x0F" in out and "0x09 write-only" in out and "(the mask on" not in out


class NoProfile(Opaque):
    """A backend that does not say which read-back map it has (an agent of another make)."""

    @property
    def capabilities(self) -> Capabilities:
        caps = self._inner.capabilities
        return dataclasses.replace(caps, details={k: v for k, v in caps.details.items() if k != "profile"})


def test_regs_of_unknown_profile_says_where_each_mask_is(capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(_REGISTRY, "noprofile", lambda url: NoProfile(url.raw))
    code, out, _ = hil(capsys, "regs", "-b", "noprofile:")
    assert code == 0
    assert "0x0F 0x0F (the mask on Intel chipsets)" in out and "0x09 0xFF (the mask on QEMU)" in out


# --- item 11: peek / poke ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(port_names()))
def test_every_register_name_is_a_port(name: str) -> None:
    assert port_arg(name).resolve(None, write=False) == (port_names()[name], name)  # type: ignore[arg-type]


def test_peek_and_poke_take_register_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert hil(capsys, "peek", "dma1.status")[1] == "0x08 (dma1.status) -> 0x00\n"
    assert hil(capsys, "peek", "DMA2.mask")[1] == "0xDE (dma2.mask) -> 0x0E\n"  # Intel: the mask reads at 0xDE
    assert hil(capsys, "peek", "dma2.mask", "-b", QEMU_PROFILE)[1] == "0xD2 (dma2.mask) -> 0xFF\n"  # QEMU: at 0xD2
    assert hil(capsys, "poke", "page.ch2", "0x12")[1] == f"0x{port_names()['ch2.page']:02X} (page.ch2) <- 0x12\n"
    assert hil(capsys, "poke", "dma1.mask", "0x05")[1] == "0x0F (dma1.mask) <- 0x05\n"
    code, out, _ = hil(capsys, "peek", "ch2.count", "--json")
    assert code == 0 and json.loads(out) == {"port": port_names()["ch2.count"], "value": 0, "name": "ch2.count"}


def test_peek_unknown_name_and_unknown_mask_port(capsys: pytest.CaptureFixture[str], agent_url: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit) as info:
        main(["peek", "dma3.status"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "'dma3.status' is neither a port number" in err and "did you mean" in err
    monkeypatch.setitem(_REGISTRY, "noprofile", lambda url: NoProfile(url.raw))
    code, out, err = hil(capsys, "peek", "dma1.mask", "-b", "noprofile:")
    assert code == 2 and out == "" and err.startswith("hil peek: error: dma1.mask: where") and err.count("\n") == 1
    code, out, err = hil(capsys, "peek", "dma1.mask", "-b", agent_url)  # the agent names its profile: intel
    assert code == 0 and out == "0x0F (dma1.mask) -> 0x0F\n", (out, err)


def test_peek_and_poke_say_the_machine_is_fresh(capsys: pytest.CaptureFixture[str], agent_url: str) -> None:
    for argv in (["peek", "0x81"], ["poke", "0x81", "2"], ["peek", "0x81", "--json"]):
        code, out, err = hil(capsys, *argv)
        assert code == 0 and "note: sim: is a fresh machine for each command" in err
        assert "note" not in out
    code, _, err = hil(capsys, "peek", "0x81", "-b", agent_url)  # an agent keeps its machine
    assert code == 0 and "fresh" not in err
    for command in ("peek", "poke"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "every command starts a fresh machine" in " ".join(capsys.readouterr().out.split())


# --- item 14: no warnings on paths that worked -----------------------------------------------------------


@pytest.mark.parametrize("url", [QEMU_PROFILE, QEMU_PROFILE + "&strict=1", "sim", "sim:?strict=1"])
def test_regs_sweep_does_not_warn_or_trip_strict(capsys: pytest.CaptureFixture[str], url: str) -> None:
    """Was: 8 undecoded_port warnings (0x80, 0x84-0x86, 0x88, 0x8C-0x8E on QEMU's page file)."""
    code, out, err = hil(capsys, "regs", "-b", url)
    assert code == 0 and err == "" and "DMA1: status" in out


@pytest.mark.parametrize("name", ["sb16-autoinit", "sb16-single", "audio-ring-autoinit"])
async def test_sb16_examples_pass_without_warnings(name: str) -> None:
    """Was: free_dma_enabled. Linux tears an ISA sound channel down with snd_dma_disable, then
    free_dma (docs/reference/linux-isa-dma.md §1.4); the examples now do the same."""
    ok, why = qemu_available()
    require(ok, "qemu-system-x86_64 (QEMU 7.2 or later)", why)
    from hil.backends import open_backend

    with structlog.testing.capture_logs() as logs:
        async with open_backend("qemu:?sb16=1") as be:
            result = await run_script(load_script(SCRIPTS / f"{name}.toml"), be)
    assert result.status == "passed", result.error
    assert [e for e in logs if e["log_level"] in ("warning", "error")] == []


# --- item 17: --help for every argument, one hex format ----------------------------------------------------



SUBCOMMANDS = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_every_argument_has_help(command: str) -> None:
    """Every argument of every subcommand says what it is (issue: peek/poke, --width, bench options had none)."""
    missing = [a.dest for a in SUBCOMMANDS[command]._actions if not a.help or a.help == argparse.SUPPRESS]
    assert missing == []


def _hex_tokens(text: str) -> list[str]:
    return re.findall(r"0[xX]([0-9A-Fa-f]+)", text)


@pytest.mark.parametrize("argv", [["regs"], ["regs", "-b", QEMU_PROFILE], ["demo", "--bytes", "48"],
                                  ["peek", "0x0f"], ["poke", "0xa", "6"], ["peek", "0xC0", "--width", "16"]])
def test_hex_is_upper_case_and_whole_width(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, _ = hil(capsys, *argv)
    assert code == 0
    tokens = _hex_tokens(out)
    assert tokens and all(t == t.upper() and len(t) in (2, 4, 6) for t in tokens), tokens
    if argv[0] == "demo":  # the memory dump: addresses and bytes in the same hex
        dump = [line for line in out.splitlines() if line.startswith("  0x")]
        assert len(dump) == 3 and all(re.fullmatch(r"  0x[0-9A-F]{6}:( [0-9A-F]{2}){16}", line) for line in dump), dump


def test_hex_format_of_single_accesses(capsys: pytest.CaptureFixture[str]) -> None:
    assert hil(capsys, "poke", "0x0A", "0x06")[1] == "0x0A <- 0x06\n"
    assert hil(capsys, "peek", "15")[1] == "0x0F -> 0x0F\n"
    assert hil(capsys, "peek", "0xC0", "--width", "16")[1] == "0xC0 -> 0x0000\n"
    assert hil(capsys, "poke", "0x80", "0x1234", "--width", "16")[1] == "0x80 <- 0x1234\n"
    assert hil(capsys, "peek", "0x3F0", "-b", "sim")[1] == "0x03F0 -> 0xFF\n"  # above 0xFF: four digits
