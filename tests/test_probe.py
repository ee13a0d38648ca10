"""``hil probe``: what DMA hardware a target has (hil/probe.py, hil/cli/probe.py).

Each finding is checked on a target that has the hardware and on one that lacks it: the
simulator with and without its floppy controller and SB16, QEMU's PC, devport on stand-in files
(a board without an 8237 reads 0xFF everywhere, docs/reference/devices.md §3), and small
stand-in ISA devices plugged into the simulator for the parts no model exists for yet: an ECP
port's ECR as Linux's ECR-present test sees it (docs/reference/devices.md §1.2, §1.3), a
parallel port without an ECR whose 10-bit decoding aliases base+0x402 to CTR, and Super I/O
configuration interfaces (docs/reference/devices.md §9).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from hil.backends import open_backend
from hil.backends.base import Backend
from hil.backends.qemu import qemu_available
from hil.errors import DeviceError
from hil.ops import In, Op, Out, port_access
from hil.probe import (
    ITE,
    WINBOND,
    Access,
    ChipsetClass,
    Finding,
    ProbeReport,
    Subject,
    Verdict,
    _DmaEvidence,
    _pair,
    chip_name,
    classify,
    decode_cnfga,
    decode_cnfgb,
    probe,
)
from hil.sim.isa import IsaDevice, PortRange
from hil.testing import require

ROOT = Path(__file__).resolve().parent.parent


def record(be: Backend) -> list[Op]:
    """Every op the backend runs from now on (a program it refuses runs none of its ops)."""
    seen: list[Op] = []
    inner = be.execute

    async def execute(ops: Sequence[Op]) -> Any:
        results = await inner(ops)
        seen.extend(ops)
        return results

    be.execute = execute  # type: ignore[method-assign]  # a spy on this one instance
    return seen


def writes(ops: Sequence[Op]) -> list[tuple[int, int]]:
    return [(op.port, op.value) for op in ops if isinstance(op, Out)]


def ports(ops: Sequence[Op]) -> set[int]:
    return {io.port for op in ops if (io := port_access(op)) is not None}


# --- stand-in devices ------------------------------------------------------------------------


class EcrPort(IsaDevice):
    """An ECP parallel port's registers as Linux's probe sees them (docs/reference/devices.md
    §1.2-§1.3): CTR at base+2 (bits 7:6 read 1), an ECR at base+0x402 whose bits 1:0 read
    empty=1/full=0 with the FIFO empty, cnfgA/cnfgB in mode 111. Records every write."""

    def __init__(self, base: int = 0x378, *, ecr: int = 0x15, cnfga: int = 0x10, cnfgb: int = 0x0B) -> None:
        super().__init__(ports=[PortRange(base, 8), PortRange(base + 0x400, 3)], name="ecr-stand-in")
        self.base, self.ctr, self.ecr, self.cnfga, self.cnfgb = base, 0xC4, ecr, cnfga, cnfgb
        self.writes: list[tuple[int, int]] = []

    def io_read(self, port: int, width: int = 8) -> int:
        match port - self.base:
            case 2:
                return 0xC0 | self.ctr
            case 0x402:
                return (self.ecr & 0xFC) | 0x01  # FIFO empty, not full
            case 0x400 if self.ecr >> 5 == 7:
                return self.cnfga
            case 0x401 if self.ecr >> 5 == 7:
                return self.cnfgb
        return 0xFF

    def io_write(self, port: int, value: int, width: int = 8) -> None:
        self.writes.append((port, value))
        match port - self.base:
            case 2:
                self.ctr = value & 0x3F
            case 0x402:
                self.ecr = value


class AliasedSpp(IsaDevice):
    """A parallel port without an ECR on a 10-bit decoder: base+0x402 is CTR again (the case
    Linux's toggle of CTR bit 1 detects, docs/reference/devices.md §1.2)."""

    def __init__(self, base: int = 0x378) -> None:
        super().__init__(ports=[PortRange(base, 8), PortRange(base + 0x400, 8)], name="spp-alias")
        self.base, self.ctr = base, 0x0C

    def io_read(self, port: int, width: int = 8) -> int:
        return 0xC0 | self.ctr if (port - self.base) & 0x3FF == 2 else 0xFF

    def io_write(self, port: int, value: int, width: int = 8) -> None:
        if (port - self.base) & 0x3FF == 2:
            self.ctr = value & 0x3F


class SuperIo(IsaDevice):
    """A Super I/O configuration interface: index/data at ``port``/``port+1``, entered by
    ``key``, left by ``exit_index`` (Winbond: 0xAA to the index port) or CR02 bit 1 (ITE);
    registers 0x20/0x21 chip ID, 0x07 LDN select, per-LDN 0x30/0x60/0x61/0x70/0x74."""

    def __init__(self, port: int, key: tuple[int, ...], chip_id: int, *, ite: bool = False,
                 ldns: dict[int, dict[int, int]] | None = None, fail_on: int | None = None) -> None:
        super().__init__(ports=[PortRange(port, 2)], name="superio-stand-in")
        self.port, self.key, self.chip_id, self.ite = port, key, chip_id, ite
        self.ldns = ldns or {}
        self.fail_on = fail_on
        self.progress = 0
        self.config = False
        self.index = 0
        self.ldn = 0x0B  # as a BIOS may leave it: the hardware monitor
        self.entries = 0

    def io_read(self, port: int, width: int = 8) -> int:
        if port == self.port:
            return self.index if self.config else 0xFF
        if not self.config:
            return 0xFF
        if self.index == self.fail_on:
            raise DeviceError(f"stand-in: read of register 0x{self.index:02X} failed")
        match self.index:
            case 0x20:
                return self.chip_id >> 8
            case 0x21:
                return self.chip_id & 0xFF
            case 0x07:
                return self.ldn
        return self.ldns.get(self.ldn, {}).get(self.index, 0x00)

    def io_write(self, port: int, value: int, width: int = 8) -> None:
        if port == self.port:
            if not self.config:
                self.progress = self.progress + 1 if value == self.key[self.progress] else int(value == self.key[0])
                if self.progress == len(self.key):
                    self.config, self.progress = True, 0
                    self.entries += 1
                return
            if value == 0xAA and not self.ite:
                self.config = False
                return
            self.index = value
            return
        if not self.config:
            return
        match self.index:
            case 0x07:
                self.ldn = value
            case 0x02 if self.ite and value & 0x02:
                self.config = False


async def sim_with(*devices: IsaDevice, url: str = "sim") -> Backend:
    be = open_backend(url)
    await be.open()
    for d in devices:
        be.machine.plug(d)  # type: ignore[attr-defined]  # the simulator's own machine, for stand-ins
    return be


# --- the 8237 and the chipset ----------------------------------------------------------------


async def test_sim_reports_an_8237_of_the_intel_class_read_only() -> None:
    async with open_backend("sim") as be:
        ops = record(be)
        report = await probe(be)
    assert report.has_8237 and report.exit_code == 0
    assert report.chipset is ChipsetClass.INTEL_STYLE
    assert report.find(Subject.DMA).verdict is Verdict.FOUND
    assert Access(0x87, 0x00) in report.find(Subject.DMA).evidence
    assert writes(ops) == []  # read-only
    assert not {0x08, 0xD0, 0x18} & {op.port for op in ops if isinstance(op, In)}  # status reads clear TC bits


async def test_sim_qemu_profile_and_qemu_are_the_qemu_class() -> None:
    async with open_backend("sim:?profile=qemu") as be:
        report = await probe(be)
    assert report.chipset is ChipsetClass.QEMU_I8257
    ch4 = report.find(Subject.CHANNEL, "ch4")
    assert ch4.verdict is Verdict.IDLE and "does not gate channels 0-3" in ch4.summary


def test_classify_by_the_read_back() -> None:
    intel = _DmaEvidence(page0=0x00, mask1=0x0F, mask2=0x0E, req1=0xFF, req2=0xFF, mirror=0x0F, spare_page=0x12)
    assert classify(intel) is ChipsetClass.INTEL_STYLE
    qemu = _DmaEvidence(page0=0x00, mask1=0x00, mask2=0x00, req1=0xFF, req2=0xFE, mirror=0xFF, spare_page=0xFF)
    assert classify(qemu) is ChipsetClass.QEMU_I8257
    gone = _DmaEvidence(*(0xFF,) * 7)
    assert classify(gone) is ChipsetClass.NO_LEGACY_DMA
    odd = _DmaEvidence(page0=0x00, mask1=0xF3, mask2=0xF0, req1=0x00, req2=0x00, mirror=0xFF, spare_page=0xFF)
    assert classify(odd) is ChipsetClass.UNKNOWN  # Bochs-style 0xF0|mask at 0x0F, no mirror


async def test_a_board_without_an_8237_is_said_plainly(tmp_path: Path) -> None:
    port = tmp_path / "port"
    port.write_bytes(b"\xFF" * 0x10000)  # every port floats: no legacy DMA block
    async with open_backend(f"devport:?port={port}") as be:
        report = await probe(be)
    assert not report.has_8237 and report.exit_code == 1
    dma = report.find(Subject.DMA)
    assert dma.verdict is Verdict.ABSENT and "0x87 reads 0xFF" in dma.summary
    assert "Boards a bench engineer can use today" in dma.hint
    assert report.chipset is ChipsetClass.NO_LEGACY_DMA
    assert not [f for f in report.findings if f.subject is Subject.CHANNEL]  # nothing to say about channels
    # the default allow-list has only the DMA ports: the rest is "not checked", not an error
    assert report.find(Subject.FDC, "0x3F0").verdict is Verdict.NOT_CHECKED
    assert report.find(Subject.FDC, "0x3F0").summary == "outside the allow-list"
    assert "0x3F0-0x3F7" in report.find(Subject.FDC, "0x3F0").hint
    assert report.find(Subject.ECP, "0x378").verdict is Verdict.NOT_CHECKED


async def test_an_allow_list_without_the_dma_ports_is_not_checked(tmp_path: Path) -> None:
    port = tmp_path / "port"
    port.write_bytes(bytes(0x10000))
    allow = tmp_path / "allow.toml"
    allow.write_text('[ports]\ndma = false\nextra = ["0x3F0-0x3F7"]\n')
    async with open_backend(f"devport:?port={port}&allow={allow}") as be:
        report = await probe(be, active=True)
    assert report.find(Subject.DMA).verdict is Verdict.NOT_CHECKED
    assert report.exit_code == 1
    assert report.find(Subject.SUPERIO, "0x2E").verdict is Verdict.NOT_CHECKED


# --- channels --------------------------------------------------------------------------------


async def test_channels_masked_unmasked_and_the_cascade() -> None:
    async with open_backend("sim") as be:
        # channel 2 programmed as Linux's floppy driver does, and unmasked; channel 1 programmed, masked
        await be.execute([Out(0x0C, 0), Out(0x04, 0x00), Out(0x04, 0x34), Out(0x81, 0x12), Out(0x05, 0xFF),
                          Out(0x05, 0x01), Out(0x0A, 0x02),
                          Out(0x02, 0x78), Out(0x02, 0x56), Out(0x83, 0x03), Out(0x03, 0x10), Out(0x03, 0x00)])
        report = await probe(be)
    ch2 = report.find(Subject.CHANNEL, "ch2")
    assert ch2.verdict is Verdict.IN_USE
    assert "address 0x3400, count 0x01FF, page 0x12" in ch2.summary
    ch1 = report.find(Subject.CHANNEL, "ch1")
    assert ch1.verdict is Verdict.IDLE and "programmed earlier" in ch1.summary and "address 0x5678" in ch1.summary
    assert report.find(Subject.CHANNEL, "ch0").verdict is Verdict.IDLE
    ch4 = report.find(Subject.CHANNEL, "ch4")
    assert ch4.verdict is Verdict.IN_USE and "write-only" in ch4.summary  # the BIOS set-up; mode unreadable


async def test_the_flip_flop_is_left_as_found() -> None:
    async with open_backend("sim") as be:
        await be.execute([Out(0x0C, 0), Out(0x04, 0x34), Out(0x04, 0x12)])
        (lsb,) = await be.execute([In(0x04)])  # the byte pointer now points at the MSB
        await probe(be)
        (msb,) = await be.execute([In(0x04)])
    assert (lsb, msb) == (0x34, 0x12)


async def test_active_clears_the_flip_flop_and_reads_status() -> None:
    async with open_backend("sim") as be:
        await be.execute([Out(0x0C, 0), Out(0x04, 0x34), Out(0x04, 0x12), In(0x04)])  # pointer left at the MSB
        ops = record(be)
        report = await probe(be, active=True)
    assert "address 0x1234" in report.find(Subject.CHANNEL, "ch2").summary  # byte order certain
    assert (0x0C, 0) in writes(ops) and (0xD8, 0) in writes(ops)
    assert "cleared the TC bits" in report.find(Subject.DMA, "status").summary


def test_a_register_that_moves_between_reads_is_a_running_transfer() -> None:
    assert _pair([0x34, 0x12, 0x34, 0x12]) == (0x1234, "")
    assert _pair([0x34, 0x12, 0x33, 0x12])[0] is None


# --- floppy controller -----------------------------------------------------------------------


async def test_fdc_absent_present_and_version_only_when_active() -> None:
    async with open_backend("sim") as be:
        assert (await probe(be)).find(Subject.FDC, "0x3F0").verdict is Verdict.ABSENT
    async with open_backend("sim:?floppy=generate") as be:
        ops = record(be)
        idle = (await probe(be)).find(Subject.FDC, "0x3F0")
        assert idle.verdict is Verdict.FOUND and "idle and ready" in idle.summary and writes(ops) == []
        active = (await probe(be, active=True)).find(Subject.FDC, "0x3F0")
    assert "VERSION 0x90" in active.summary
    assert Access(0x3F5, 0x10, write=True) in active.evidence and Access(0x3F5, 0x90) in active.evidence


async def test_fdc_on_a_devport_stand_in_with_the_ports_allowed(tmp_path: Path) -> None:
    image = bytearray(0x10000)
    image[0x3F2], image[0x3F4] = 0x0C, 0x80  # DOR: out of reset, DMA gate; MSR: RQM
    port = tmp_path / "port"
    port.write_bytes(bytes(image))
    allow = tmp_path / "allow.toml"
    allow.write_text('[ports]\nextra = ["0x3F0-0x3F7"]\n')
    async with open_backend(f"devport:?port={port}&allow={allow}") as be:
        fdc = (await probe(be)).find(Subject.FDC, "0x3F0")
    assert fdc.verdict is Verdict.FOUND and "MSR 0x80" in fdc.summary


# --- ECP parallel port -----------------------------------------------------------------------


async def test_ecp_read_only_reads_ctr_and_ecr_and_writes_nothing() -> None:
    port = EcrPort()
    be = await sim_with(port)
    try:
        f = (await probe(be)).find(Subject.ECP, "0x378")
    finally:
        await be.close()
    assert port.writes == []
    assert f.verdict is Verdict.INFO and "ECR 0x15" in f.summary and "--active" in f.hint
    assert Access(0x77A, 0x15) in f.evidence


async def test_ecp_active_runs_linuxs_test_and_restores_ctr_and_ecr() -> None:
    port = EcrPort()
    be = await sim_with(port)
    try:
        f = (await probe(be, active=True)).find(Subject.ECP, "0x378")
    finally:
        await be.close()
    assert f.verdict is Verdict.FOUND
    assert "IRQ 7, DMA 3" in f.summary and "8-bit FIFO" in f.summary
    assert (0x37A, 0x0C) in port.writes and (0x77A, 0x34) in port.writes and (0x77A, 0xF4) in port.writes
    assert (port.ctr | 0xC0, port.ecr) == (0xC4, 0x15)  # restored
    assert port.writes[-2:] == [(0x77A, 0x15), (0x37A, 0xC4)]


async def test_ecp_at_another_base_and_other_cnfgb_values() -> None:
    port = EcrPort(0x278, cnfgb=0x39)  # IRQ 5 (111), DMA 1
    be = await sim_with(port)
    try:
        report = await probe(be, active=True)
    finally:
        await be.close()
    assert "IRQ 5, DMA 1" in report.find(Subject.ECP, "0x278").summary
    assert report.find(Subject.ECP, "0x378").verdict is Verdict.ABSENT


async def test_an_aliased_spp_has_no_ecr() -> None:
    port = AliasedSpp()
    be = await sim_with(port)
    try:
        f = (await probe(be, active=True)).find(Subject.ECP, "0x378")
    finally:
        await be.close()
    assert f.verdict is Verdict.ABSENT and "follows CTR" in f.summary
    assert port.ctr == 0x0C  # CTR restored to what it was


async def test_an_ecr_in_a_fifo_mode_is_left_alone() -> None:
    port = EcrPort(ecr=0x75)  # mode 011 ECP FIFO: a driver's
    be = await sim_with(port)
    try:
        f = (await probe(be, active=True)).find(Subject.ECP, "0x378")
    finally:
        await be.close()
    assert f.verdict is Verdict.FOUND and "not touched" in f.summary
    assert port.writes == []


def test_cnfg_decoding() -> None:
    assert decode_cnfgb(0x0B) == ("IRQ 7", "DMA 3")
    assert decode_cnfgb(0x00) == ("IRQ jumpered", "DMA jumpered (8-bit)")
    assert decode_cnfgb(0x3D) == ("IRQ 5", "DMA 5")
    assert decode_cnfga(0x10).startswith("8-bit") and decode_cnfga(0x90).endswith("level interrupts")
    assert decode_cnfga(0x00).startswith("16-bit") and "unknown" in decode_cnfga(0x70)


# --- Sound Blaster ---------------------------------------------------------------------------


async def test_sb16_only_with_active() -> None:
    async with open_backend("sim:?sb16=1") as be:
        ops = record(be)
        quiet = await probe(be)
        assert not ports(ops) & set(range(0x220, 0x230))
        loud = await probe(be, active=True)
    assert quiet.find(Subject.SB16, "0x220-0x280").verdict is Verdict.NOT_CHECKED
    sb = loud.find(Subject.SB16, "0x220")
    assert sb.verdict is Verdict.FOUND and "version 4.05" in sb.summary
    assert "IRQ 5" in sb.summary and "DMA 1, 5" in sb.summary
    assert loud.find(Subject.SB16, "0x240").verdict is Verdict.ABSENT


# --- Super I/O -------------------------------------------------------------------------------

LPT = {1: {0x30: 0x01, 0x60: 0x03, 0x61: 0x78, 0x70: 0x07, 0x74: 0x03}}


async def test_winbond_identity_and_lpt_dma_and_exit() -> None:
    chip = SuperIo(0x2E, (0x87, 0x87), 0xC562, ldns=LPT)
    be = await sim_with(chip)
    try:
        report = await probe(be, active=True)
    finally:
        await be.close()
    f = report.find(Subject.SUPERIO, "0x2E")
    assert f.verdict is Verdict.FOUND
    assert "chip ID 0xC562 (NCT6779D)" in f.summary
    assert "base 0x378, IRQ 7, DMA 3" in f.summary
    assert not chip.config and chip.ldn == 0x0B  # exited, and the LDN put back
    assert report.find(Subject.SUPERIO, "0x4E").verdict is Verdict.ABSENT


async def test_ite_identity_at_4e() -> None:
    chip = SuperIo(0x4E, (0x87, 0x01, 0x55, 0xAA), 0x8728, ite=True, ldns={3: {0x30: 1, 0x74: 0x04}})
    be = await sim_with(chip)
    try:
        f = (await probe(be, active=True)).find(Subject.SUPERIO, "0x4E")
    finally:
        await be.close()
    assert "ITE Super I/O, chip ID 0x8728 (IT8728)" in f.summary and "no DMA (CR74 0x04)" in f.summary
    assert not chip.config


@pytest.mark.parametrize("register", [0x20, 0x74])  # in the entry program, in the LDN program
async def test_superio_exits_config_mode_even_when_a_step_fails(register: int) -> None:
    chip = SuperIo(0x2E, (0x87, 0x87), 0xC562, ldns=LPT, fail_on=register)
    be = await sim_with(chip)
    try:
        f = (await probe(be, active=True)).find(Subject.SUPERIO, "0x2E")
    finally:
        await be.close()
    assert f.verdict is Verdict.ERROR and f"0x{register:02X}" in f.summary
    assert chip.entries == 1 and not chip.config


async def test_superio_needs_active_and_the_allow_list(tmp_path: Path) -> None:
    port = tmp_path / "port"
    port.write_bytes(bytes(0x10000))
    async with open_backend(f"devport:?port={port}") as be:
        ops = record(be)
        report = await probe(be, active=True)
    f = report.find(Subject.SUPERIO, "0x2E")
    assert f.verdict is Verdict.NOT_CHECKED and "0x2E-0x2F" in f.hint
    assert not ports(ops) & {0x2E, 0x2F, 0x4E, 0x4F}  # refused before anything ran


def test_chip_names() -> None:
    assert chip_name(ITE, 0x8712) == "IT8712"
    assert chip_name(WINBOND, 0xB473) == "NCT6775F"  # revision in the low nibble
    assert chip_name(WINBOND, 0x1234) == "unknown ID"


# --- output ----------------------------------------------------------------------------------


def test_one_line_per_finding_with_the_evidence() -> None:
    f = Finding(Subject.ECP, "0x378", Verdict.ABSENT, "no ECR", (Access(0x37A, 0x0C, True), Access(0x77A, 0xFF),
                                                              Access(0x77A, 0xFE)), "a hint")
    assert f.line() == "ecp 0x378: absent: no ECR [W 0x037A<-0x0C R 0x077A=0xFF,0xFE] -- a hint"
    report = ProbeReport("sim", "sim", False, (f,))
    assert report.format().splitlines()[1] == f.line()
    data = json.loads(json.dumps(report.to_json()))
    assert data["findings"][0]["evidence"][0] == {"port": 0x37A, "value": 0x0C, "op": "out"}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hil", "probe", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def test_cli_text_json_and_exit_status(tmp_path: Path) -> None:
    text = run_cli("sim:?floppy=generate&sb16=1")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith("probe sim:?floppy=generate&sb16=1")
    assert any(line.startswith("fdc 0x3F0: found:") for line in lines)
    data = json.loads(run_cli("sim", "--json").stdout)
    assert data["has_8237"] is True and data["chipset"] == "intel_style"
    port = tmp_path / "port"
    port.write_bytes(b"\xFF" * 0x10000)
    none = run_cli(f"devport:?port={port}")
    assert none.returncode == 1 and "8237: absent: no 8237" in none.stdout
    bad = run_cli("nosuch:")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


# --- QEMU's PC -------------------------------------------------------------------------------


async def test_qemu_pc() -> None:
    ok, why = qemu_available()
    require(ok, "qemu-system-x86_64", why)
    async with open_backend("qemu:") as be:
        plain = await probe(be)
    assert plain.has_8237 and plain.chipset is ChipsetClass.QEMU_I8257
    assert plain.find(Subject.FDC, "0x3F0").verdict is Verdict.NOT_CHECKED  # outside qemu:'s default allow-list
    async with open_backend("qemu:?floppy=generate&sb16=1&allow=0x378-0x37F,0x778-0x77F") as be:
        report = await probe(be, active=True)
    assert "VERSION 0x90" in report.find(Subject.FDC, "0x3F0").summary
    assert "version 4.05" in report.find(Subject.SB16, "0x220").summary
    # -parallel none: nothing at 0x378 (and QEMU's parallel port has no ECR, docs/reference/devices.md §1.8)
    assert report.find(Subject.ECP, "0x378").verdict is Verdict.ABSENT


async def test_a_chip_that_answers_without_a_key_is_reported_not_named() -> None:
    chip = SuperIo(0x2E, (0x87, 0x87), 0xC562, ldns=LPT)
    chip.config = True  # a BIOS that never closed it
    be = await sim_with(chip)
    try:
        f = (await probe(be, active=True)).find(Subject.SUPERIO, "0x2E")
    finally:
        await be.close()
    assert f.verdict is Verdict.INFO and "0xC562 with and without an entry key" in f.summary


def test_the_readme_example_output_is_what_the_command_prints(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## What DMA hardware is there: `hil probe`"):]
    commands = section[section.index("```sh\n") + 6:section.index("```\n")]
    stand_in = next(line for line in commands.splitlines() if line.startswith("python -c"))
    shown = section[section.index("```text\n") + 8:]
    shown = shown[:shown.index("```\n")]
    subprocess.run(["bash", "-c", stand_in.partition(" # ")[0]], cwd=tmp_path, check=True)
    out = subprocess.run([sys.executable, "-m", "hil", "probe", "devport:?port=nodma.port"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, env={**os.environ,
                                                                          "PYTHONPATH": str(ROOT)})
    assert out.returncode == 1
    assert out.stdout == shown


def test_cli_keeps_the_undecoded_port_warnings_for_verbose() -> None:
    """The probe reads absent devices' ports on purpose and its findings say they floated; the
    sim's undecoded-port warnings would repeat that on stderr, so they show only with -v."""
    quiet = run_cli("sim")
    assert quiet.returncode == 0 and "undecoded_port" not in quiet.stderr and "fdc 0x3F0: absent" in quiet.stdout
    loud = run_cli("sim", "-v")
    assert loud.returncode == 0 and "undecoded_port" in loud.stderr


@pytest.mark.parametrize("url, where, says", [
    ("sim:?ecp=1", "0x378", "IRQ 7, DMA 3"),
    ("sim:?ecp=0x278&ecp_dma=1&ecp_irq=5", "0x278", "IRQ 5, DMA 1"),
])
async def test_the_simulators_ecp_model_is_found_as_linux_finds_a_port(url: str, where: str, says: str) -> None:
    """The stand-ins above follow parport_pc.c's ECR-present test (docs/reference/devices.md §1.2);
    the simulator's real ECP model (hil.sim.ecp) must be found by the same probe, with the
    cnfgB it is configured for, and be left in SPP mode with CTR as it was."""
    async with open_backend(url) as be:
        before = await be.execute([In(int(where, 16) + 2), In(int(where, 16) + 0x402)])
        f = (await probe(be, active=True)).find(Subject.ECP, where)
        after = await be.execute([In(int(where, 16) + 2), In(int(where, 16) + 0x402)])
    assert f.verdict is Verdict.FOUND and says in f.summary and "8-bit FIFO" in f.summary
    assert after == before
