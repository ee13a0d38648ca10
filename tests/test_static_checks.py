"""Nothing reaches the machine before the script is checked (issue 11 item 13).

Every script below starts with an ``out`` step, then has a step that must fail for a reason the
script and the backend already decide: a DMA buffer rule (docs/reference/linux-isa-dma.md §3
rules 4, 5 and 17, and the 64K-units length), a memory step outside the backend's window, a
``dreq`` before any device, an ``enable`` before any ``program``. Each must be refused by
:func:`hil.runner.prepare` with the step and the rule named, and the recording backend must
show that no port or memory access happened. Before the fix the ``out`` had already run.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from hil.backends.recording import RecordingBackend
from hil.backends.sim import SimBackend
from hil.cli import main
from hil.runner import prepare, run_script
from hil.script import load_script
from hil.script.model import ScriptError

FIRST = """
    [[step]]
    op = "out"
    name = "must not run"
    port = 0x81
    value = 0x99
"""


def write(tmp_path: Path, body: str, name: str = "t") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'[script]\nname = "{name}"\nrequires = ["devices"]\n' + textwrap.dedent(FIRST)
                    + textwrap.dedent(body), encoding="utf-8")
    return path


def program(channel: int, addr: int, length: int, mode: str = "DMA_MODE_READ", extra: str = "") -> str:
    return (f'[[step]]\nop = "program"\nchannel = {channel}\nmode = "{mode}"\naddr = {addr:#x}\n'
            f"length = {length:#x}\n{extra}")


CASES = {
    "16-bit odd length": (program(5, 0x20000, 15), "step 2 (program)", "'length'", "rule 17, 16-bit alignment"),
    "16-bit odd address": (program(6, 0x20001, 16), "step 2 (program)", "'addr'", "rule 17, 16-bit alignment"),
    "above 16 MiB": (program(1, 0x1000000, 16), "step 2 (program)", "'addr'", "rule 4, the low 16 MiB"),
    "length 0": (program(1, 0x20000, 0), "step 2 (program)", "'length'", "length 1..64K units"),
    "longer than 64 KiB": (program(1, 0x20000, 0x10001), "step 2 (program)", "'length'", "length 1..64K units"),
    "64 KiB crossing": (program(2, 0xFFF0, 0x20), "step 2 (program)", "'addr'", "rule 5, no 64/128 KiB crossing"),
    "decrement below the boundary": (program(2, 0x20008, 0x10, "DMA_MODE_READ | 0x20"), "step 2 (program)",
                                     "'addr'", "rule 5, no 64/128 KiB crossing"),
    "read outside the window": ('[[step]]\nop = "read"\naddr = 0x1FFFF0\nlength = 0x20\n', "step 2 (read)",
                                "'addr'", "outside the memory window of"),
    "write outside the window": ('[[step]]\nop = "write"\naddr = 0x200000\nhex = "01"\n', "step 2 (write)",
                                 "'addr'", "outside the memory window of"),
    "fill outside the window": ('[[step]]\nop = "fill"\naddr = 0x1FFFFF\nlength = 2\n', "step 2 (fill)",
                                "'addr'", "outside the memory window of"),
    "dreq with no device": ('[[step]]\nop = "dreq"\nchannel = 3\nlevel = true\n', "step 2 (dreq)",
                            "'channel'", "no device attached to channel 3"),
    "enable before program": ('[[step]]\nop = "enable"\nchannel = 3\n', "step 2 (enable)",
                              "'channel'", "before any program step"),
    "in a repeat, first pass": (('[[step]]\nop = "repeat"\ncount = 3\nsteps = [{op = "in", port = 8}, '
                                 '{op = "program", channel = 7, mode = "DMA_MODE_READ", addr = 0x20000, length = 3}]\n'),
                                "step 2[1].2 (program)", "'length'", "rule 17, 16-bit alignment"),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_refused_before_any_access(tmp_path: Path, case: str) -> None:
    body, step, key, rule = CASES[case]
    script = load_script(write(tmp_path, body))
    async with RecordingBackend(SimBackend(mem_size=2 << 20)) as be:
        with pytest.raises(ScriptError) as err:
            await run_script(script, be)
        assert be.trace == [] and be.programs == 0  # not even the out step
        assert await be.inb(0x81) != 0x99  # channel 2's page register: the out step never ran
    message = str(err.value)
    assert step in message and f"key {key}" in message and rule in message, message
    assert "refused before anything ran" in message


async def test_an_error_names_the_first_bad_step_after_a_device_is_attached(tmp_path: Path) -> None:
    """A device attached earlier makes its ``dreq`` legal; a later bad step is still found."""
    body = ('[[step]]\nop = "device"\nchannel = 3\nkind = "sink"\n'
            '[[step]]\nop = "dreq"\nchannel = 3\nlevel = true\n' + program(3, 0x1FFF0, 0x20))
    async with RecordingBackend(SimBackend()) as be:
        with pytest.raises(ScriptError, match=r"step 4 \(program\).*rule 5"):
            prepare(load_script(write(tmp_path, body)), be)
        assert be.trace == []


async def test_what_the_rules_allow_is_not_refused(tmp_path: Path) -> None:
    """Legal steps pass: an unchecked program (probing hardware, as IsaDma allows), a cascade
    mode, a dreq after its device, an enable after a program, memory at the window's edge."""
    body = (program(2, 0xFFF0, 0x20, extra="unchecked = true\nenable = false\n")
            + program(5, 0, 0x10, "DMA_MODE_CASCADE")
            + '[[step]]\nop = "device"\nchannel = 1\nkind = "sink"\n[[step]]\nop = "dreq"\nchannel = 1\nlevel = false\n'
            + program(1, 0x30000, 0x10, extra="enable = false\n")
            + '[[step]]\nop = "enable"\nchannel = 1\n'
            + '[[step]]\nop = "read"\naddr = 0xFFFF0\nlength = 0x10\n')
    async with RecordingBackend(SimBackend(mem_size=1 << 20)) as be:
        result = await run_script(load_script(write(tmp_path, body)), be)
        assert be.trace  # it ran
    assert result.status == "passed", result.error


async def test_enabling_what_an_unchecked_program_set_up_is_refused(tmp_path: Path) -> None:
    """The rules IsaDma applies when it unmasks the channel, known from the earlier step."""
    body = program(2, 0xFFF0, 0x20, extra="unchecked = true\nenable = false\n") + '[[step]]\nop = "enable"\nchannel = 2\n'
    async with RecordingBackend(SimBackend()) as be:
        with pytest.raises(ScriptError, match=r"step 3 \(enable\).*unchecked program.*rule 5"):
            await run_script(load_script(write(tmp_path, body)), be)
        assert be.trace == []


def test_hil_run_refuses_before_the_first_script_runs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A good script first, a bad one second: one error line, no journal, nothing ran."""
    good = tmp_path / "good.toml"
    good.write_text('[script]\nname = "good"\n[[step]]\nop = "in"\nport = 8\n', encoding="utf-8")
    bad = write(tmp_path, CASES["64 KiB crossing"][0], name="bad")
    code = main(["run", str(good), str(bad), "--journal-dir", str(tmp_path / "jd")])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and not (tmp_path / "jd").exists()
    (line,) = err.splitlines()
    assert line.startswith(f"hil run: error: {bad}: step 2 (program): key 'addr': DMA-ISA-LPC rule 5")
