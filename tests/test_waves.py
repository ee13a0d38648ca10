"""VCD waveforms of the simulator (issue 17 item 3), read back with the tests' own reader
(:mod:`vcd_reader`, not pyvcd) and checked against what the script did: the header viewers
need, the handshake of every DMA cycle, the data on the bus, the registers, the IRQ line and
the decoded events.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from vcd_reader import Vcd, VcdFormatError, read_vcd

from hil.backends import open_backend
from hil.backends.sim import SimBackend
from hil.errors import WaveformError
from hil.runner import run_script
from hil.script import load_script
from hil.testing import require

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "configs" / "scripts"


@pytest.fixture(autouse=True)
def _pyvcd() -> None:
    require(importlib.util.find_spec("vcd") is not None, "pyvcd", "pip install -e '.[test]'")


async def _wave(tmp_path: Path, url: str, script: str) -> tuple[Vcd, str]:
    from hil.waves.vcd import waveform

    path = tmp_path / "w.vcd"
    async with open_backend(url) as be:
        async with waveform(be, path, title=script):
            result = await run_script(load_script(SCRIPTS / script), be)
        assert result.status == "passed"
        assert be.machine.tracer is None  # type: ignore[attr-defined]  # a SimBackend: the hook is off again
    text = path.read_text(encoding="utf-8")
    return read_vcd(text), text


async def test_floppy_read_waveform(tmp_path: Path) -> None:
    """floppy-read: READ DATA of C0 H0 R3 (LBA 2) on DMA 2: 512 cycles, each with DREQ, DACK and
    MEMW, the sector's bytes on the data bus in order, the address register counting up, TC
    (EOP and the 'TC ch2' event) in the last cycle, IRQ 6 after it (docs/reference/devices.md §2.4)."""
    wave, text = await _wave(tmp_path, "sim:?floppy=generate", "floppy-read.toml")
    assert wave.timescale == "1 ns"
    assert ("module", "pc") in wave.scopes and ("module", "pc.dma1.ch2") in wave.scopes
    assert {kind for kind, _ in wave.scopes} == {"module"}
    assert {p for _, p in wave.scopes} >= {"pc.dma1", "pc.dma2", "pc.bus", "pc.pic", "pc.fdc"}
    v = wave.vars
    dack = v["pc.dma1.ch2.dack"].edges()
    assert len(dack) == 512
    assert v["pc.dma1.ch2.dreq"].edges()[:1] and v["pc.dma1.ch2.dreq"].edges()[0] <= dack[0]
    data = [v["pc.bus.data"].value_at(t) for t in dack]
    assert data == [(13 * 2 + i) & 0xFF for i in range(512)]  # the generated disk's LBA 2
    assert all(v["pc.bus.memw"].value_at(t) == 1 and v["pc.bus.memr"].value_at(t) == 0 for t in dack)
    address = [v["pc.bus.address"].value_at(t) for t in dack]
    assert address == list(range(address[0], address[0] + 512))
    assert [v["pc.dma1.ch2.count"].value_at(t) for t in dack[:2]] == [510, 509]
    assert v["pc.dma1.ch2.count"].value_at(dack[-1]) == 0xFFFF
    eop = v["pc.dma1.ch2.eop"].edges()
    assert eop == [dack[-1]]
    assert ("TC ch2" in [val for _, val in v["pc.dma1.event"].changes])
    assert v["pc.dma1.event"].value_at(dack[-1]) == "TC ch2"
    assert v["pc.dma1.ch2.tc"].value_at(dack[-1] + 10_000) == 1
    irq6 = v["pc.pic.irq6"].edges()
    assert any(t > dack[-1] for t in irq6)
    assert v["pc.fdc.irq6"].edges() == irq6
    events = [val for _, val in v["pc.fdc.event"].changes if val]
    assert "FDC READ C0 H0 R3" in events and "FDC SPECIFY" in events and "FDC RECALIBRATE" in events
    read_at = next(t for t, val in v["pc.fdc.event"].changes if val == "FDC READ C0 H0 R3")
    assert read_at < dack[0]
    # the handshake: DMA1's request goes through channel 4 of DMA2 to the CPU
    assert v["pc.dma2.hrq"].edges()[:1] and v["pc.dma2.ch4.dack"].edges() == v["pc.dma1.hlda"].edges()
    assert all(v["pc.dma2.hlda"].value_at(t) == 1 for t in dack)
    assert v["pc.dma1.ch2.mask"].value_at(dack[0]) == 0
    assert "$date" not in text or "$upscope $end" in text


async def test_memory_to_memory_and_page_registers(tmp_path: Path) -> None:
    wave, _ = await _wave(tmp_path, "sim", "mem-to-mem.toml")
    v = wave.vars
    assert "TC ch0" in [val for _, val in v["pc.dma1.event"].changes]
    assert v["pc.dma1.ch0.dack"].edges()
    assert "pc.fdc.event" not in v  # no floppy plugged: no fdc scope


async def test_sb16_events(tmp_path: Path) -> None:
    wave, _ = await _wave(tmp_path, "sim:?sb16=1", "sb16-single.toml")
    v = wave.vars
    events = [val for _, val in v["pc.sb16.event"].changes if val]
    # speaker on, output rate 8000 Hz (0x1F40), 8-bit single-cycle output of 1000 samples (length - 1 = 0x3E7)
    assert events == ["SB16 DSP D1", "SB16 DSP 41 1F 40", "SB16 DSP C0 00 E7 03"]
    assert v["pc.dma1.ch1.dack"].edges()
    assert v["pc.pic.irq5"].edges()


async def test_qemu_profile_has_no_cycles_for_handler_devices(tmp_path: Path) -> None:
    """On profile=qemu the FDC moves its data inside the port write (its transfer handler):
    the count jumps and TC is set, with no DACK pulse (hil.sim.trace's module docstring)."""
    wave, _ = await _wave(tmp_path, "sim:?floppy=generate&profile=qemu", "floppy-read.toml")
    v = wave.vars
    assert v["pc.dma1.ch2.dack"].edges() == []
    assert 1 in [val for _, val in v["pc.dma1.ch2.tc"].changes]


def test_reader_is_strict() -> None:
    head = "$timescale 1 ns $end $scope module pc $end $var wire 1 ! a $end"
    with pytest.raises(VcdFormatError, match="scopes not closed"):
        read_vcd(head + " $enddefinitions $end")
    with pytest.raises(VcdFormatError, match="outside any scope"):
        read_vcd("$var wire 1 ! a $end $enddefinitions $end")
    with pytest.raises(VcdFormatError, match="backwards"):
        read_vcd(head + " $upscope $end $enddefinitions $end #5 1! #3 0!")
    with pytest.raises(VcdFormatError, match="undeclared"):
        read_vcd(head + " $upscope $end $enddefinitions $end #5 1?")
    wave = read_vcd(head + " $upscope $end $enddefinitions $end #0 0! #5 1! #9 0!")
    assert wave.vars["pc.a"].edges() == [5] and wave.end == 9


async def test_gtkw_view_names_signals_of_the_vcd(tmp_path: Path) -> None:
    wave, _ = await _wave(tmp_path, "sim:?floppy=generate", "floppy-read.toml")
    text = (tmp_path / "w.gtkw").read_text(encoding="utf-8")
    assert f'[dumpfile] "{(tmp_path / "w.vcd").resolve()}"' in text
    traces = [line for line in text.splitlines() if line.startswith("pc.")]
    assert "pc.dma1.ch2.dack" in traces and "pc.bus.data[15:0]" in traces and "pc.fdc.event" in traces
    for trace in traces:
        assert trace.split("[")[0] in wave.vars, trace
    assert "pc.sb16.event" not in traces  # no SB16 on this backend


async def test_waveform_needs_a_simulator(tmp_path: Path) -> None:
    from hil.waves.vcd import waveform

    be = SimBackend()
    async with be, waveform(be, tmp_path / "x.vcd"):
        with pytest.raises(Exception, match="already traced"):
            be.signal_trace(lambda t, i, v: None)
    from hil.backends.mock import MockBackend

    mock = MockBackend(lambda op: 0)
    async with mock:
        with pytest.raises(WaveformError, match="needs a simulator backend"):
            async with waveform(mock, tmp_path / "y.vcd"):
                pass
        async with waveform(mock, tmp_path / "y.vcd", required=False) as tracer:
            assert tracer is None
    assert not (tmp_path / "y.vcd").exists()


def test_hil_run_vcd(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "hil", "run", "-q", "-b", "sim:?floppy=generate", "--vcd",
                          str(tmp_path / "run.vcd"), str(SCRIPTS / "floppy-read.toml"), str(SCRIPTS / "mem-to-mem.toml")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run-floppy-read.gtkw", "run-floppy-read.vcd",
                                                          "run-mem-to-mem.gtkw", "run-mem-to-mem.vcd"]
    assert read_vcd((tmp_path / "run-floppy-read.vcd").read_text()).vars["pc.dma1.ch2.dack"].edges()
    bad = subprocess.run([sys.executable, "-m", "hil", "run", "-q", "-b", "qemu:", "--vcd", str(tmp_path / "q.vcd"),
                          str(SCRIPTS / "mem-to-mem.toml")], capture_output=True, text=True, timeout=300, env=env)
    assert bad.returncode == 2
    assert "a waveform needs a simulator backend" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stderr


def test_the_readme_picture_is_what_the_docs_script_draws(tmp_path: Path) -> None:
    """docs/images/floppy-read-tc.svg is generated, not drawn: the script redraws it identically."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, str(ROOT / "docs" / "waveform.py"), "--out", str(tmp_path / "w.svg")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    drawn = (tmp_path / "w.svg").read_text(encoding="utf-8")
    assert drawn == (ROOT / "docs" / "images" / "floppy-read-tc.svg").read_text(encoding="utf-8")
    assert ">FFFF<" in drawn and ">101FF<" in drawn  # the count after TC, the sector's last address


def test_the_hook_is_off_by_default() -> None:
    from hil.sim.machine import Machine, QemuMachine

    assert Machine.tracer is None and QemuMachine().tracer is None and SimBackend().machine.tracer is None
