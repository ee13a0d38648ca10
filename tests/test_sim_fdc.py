"""The simulator's floppy controller (hil/sim/fdc.py): the ``intel`` profile from the datasheet
facts of docs/reference/devices.md §2, the ``qemu`` profile from QEMU's measured behaviour
(docs/reference/qemu-qtest.md §6, docs/reference/devices.md §2.5), and the sim backend's ``floppy`` option."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hil.backends import open_backend
from hil.backends.base import Capability
from hil.errors import BackendOptionError, DeviceError
from hil.ops import In, Out
from hil.sim.fdc import GEOMETRIES, SECTOR, Disk, FloppyController, QemuFloppyController, fdc_for, generated_image
from hil.sim.machine import Machine, machine_for

MSR, FIFO, DOR, DIR = 0x3F4, 0x3F5, 0x3F2, 0x3F7
IMAGE = generated_image()
SCRIPTS = Path(__file__).resolve().parent.parent / "configs" / "scripts"


def sector(lba: int) -> bytes:
    return IMAGE[lba * SECTOR:(lba + 1) * SECTOR]


def machine(profile: str = "intel", image: bytes = IMAGE) -> tuple[Machine, FloppyController]:
    m = machine_for(profile)
    fdc = fdc_for(profile, {0: Disk(image)})
    m.plug(fdc)
    return m, fdc


def send(m: Machine, *values: int) -> None:
    """Command bytes, each after RQM with DIO clear (docs/reference/qemu-qtest.md §6 handshake)."""
    for v in values:
        assert m.io_read(MSR) & 0xC0 == 0x80, hex(m.io_read(MSR))
        m.io_write(FIFO, v)


def result(m: Machine, n: int) -> list[int]:
    out = []
    for _ in range(n):
        assert m.io_read(MSR) & 0xC0 == 0xC0
        out.append(m.io_read(FIFO))
    return out


def dma2(m: Machine, mode: int, addr: int, count: int, page: int = 2, *, unmask: bool = True) -> None:
    """docs/reference/linux-isa-dma.md §2(a): mask, FF, mode, address, page, count, unmask."""
    for port, value in ((0x0A, 0x06), (0x0C, 0), (0x0B, mode), (0x04, addr & 0xFF), (0x04, addr >> 8),
                        (0x81, page), (0x05, count & 0xFF), (0x05, count >> 8)):
        m.io_write(port, value)
    if unmask:
        m.io_write(0x0A, 0x02)


def count2(m: Machine) -> int:
    m.io_write(0x0C, 0)
    return m.io_read(0x05) | m.io_read(0x05) << 8


def seek(m: Machine, cyl: int) -> list[int]:
    send(m, 0x0F, 0x00, cyl)
    assert m.wait_irq(6, timeout_ns=2_000_000_000)
    send(m, 0x08)
    return result(m, 2)


# --- intel: registers and the command / result phases (docs/reference/devices.md §2.1-§2.3) -----------------------


def test_intel_comes_up_as_a_bios_leaves_it_and_version_dumpreg_lock():
    m, _ = machine()
    assert m.io_read(DOR) == 0x0C and m.io_read(MSR) == 0x80 and not m.irq_level(6)
    assert m.io_read(DIR) & 0x80  # disk change since power-on (§2.1 DIR)
    send(m, 0x10)
    assert m.io_read(MSR) == 0xD0 and result(m, 1) == [0x90] and m.io_read(MSR) == 0x80
    send(m, 0x03, 0xAF, 0x1E)  # SPECIFY SRT=A HUT=F HLT=0x0F ND=0: no result phase
    send(m, 0x13, 0x00, 0x4A, 0x07)  # CONFIGURE EIS, FIFO on, threshold 10+1, PRETRK 7
    send(m, 0x94)
    assert result(m, 1) == [0x10]  # LOCK (§2.2)
    send(m, 0x0E)
    assert result(m, 10) == [0, 0, 0, 0, 0xAF, 0x1E, 0, 0x80, 0x4A, 0x07]  # DUMPREG layout (§2.2)


def test_intel_invalid_command_and_sense_interrupt_without_interrupt():
    m, _ = machine()
    for opcode in (0x00, 0x1F, 0x8F):
        send(m, opcode)
        assert result(m, 1) == [0x80]  # invalid: ST0 = 0x80, one byte (§2.2)
    send(m, 0x08)
    assert result(m, 1) == [0x80]  # SENSE INTERRUPT with none pending
    assert not m.irq_level(6)


def test_intel_reset_interrupt_and_four_sense_interrupts():
    """DOR /RESET low then high: an interrupt, then SENSE INTERRUPT STATUS four times gives
    0xC0 + drive (docs/reference/devices.md §2.2), then none is pending."""
    m, _ = machine()
    m.io_write(DOR, 0x08)
    assert m.io_read(MSR) == 0x00  # held in reset
    m.io_write(DOR, 0x0C)
    assert m.irq_level(6) and m.irq_count(6) == 1
    got = []
    for _ in range(4):
        send(m, 0x08)
        got.append(result(m, 2))
    assert got == [[0xC0, 0], [0xC1, 0], [0xC2, 0], [0xC3, 0]] and not m.irq_level(6)
    send(m, 0x08)
    assert result(m, 1) == [0x80]


def test_intel_dor_bit3_gates_the_interrupt():
    """On the AT DOR bit 3 gates DRQ and INT (docs/reference/devices.md §2.1)."""
    m, _ = machine()
    m.io_write(DOR, 0x14)  # motor A, /RESET, no gate
    send(m, 0x07, 0x00)
    m.advance(50_000_000)
    assert not m.irq_level(6)
    m.io_write(DOR, 0x1C)
    assert m.irq_level(6)


def test_intel_seek_takes_its_steps_with_the_drive_busy_bit():
    """SEEK: CMD BUSY drops after the last byte (no result phase), the drive-busy bit stays up
    while the drive steps at SPECIFY's rate, then IRQ 6 and SENSE INTERRUPT gives SE + PCN."""
    m, fdc = machine()
    send(m, 0x03, 0xC0, 0x02)  # SRT = 0xC: 4 ms per step at 500 kb/s
    send(m, 0x0F, 0x00, 10)
    assert m.io_read(MSR) == 0x81  # RQM + drive 0 busy
    m.advance(30_000_000)
    assert m.io_read(MSR) == 0x81 and not m.irq_level(6)
    start = m.now_ns
    assert m.wait_irq(6, timeout_ns=100_000_000)
    assert 40_000_000 - 31_000_000 <= m.now_ns - start + 30_000_000 - 1_000_000 <= 41_000_000
    assert m.io_read(MSR) == 0x80
    send(m, 0x08)
    assert result(m, 2) == [0x20, 10] and not m.irq_level(6)
    assert fdc.drives[0].cylinder == 10 and not m.io_read(DIR) & 0x80  # a step cleared DSKCHG
    send(m, 0x04, 0x00)
    assert result(m, 1) == [0x28]  # ST3: RDY, two-sided, not track 0 (§2.3)


# --- intel: data commands on DMA 2 (docs/reference/devices.md §2.4) ----------------------------------------------------


def test_intel_read_data_tc_ends_normally_and_the_count_falls_at_the_data_rate():
    m, _ = machine()
    m.mem_fill(0x23000, 1024, 0xEE)
    dma2(m, 0x46, 0x3000, 511)
    send(m, 0x66, 0x00, 0, 0, 3, 2, 3, 0x1B, 0xFF)  # READ DATA C0 H0 R3 (LBA 2), EOT 3
    assert m.io_read(MSR) == 0x10  # execution: CMD BUSY, no RQM
    # wait for the data field, then sample the count while the sector passes at 16 us per byte
    while count2(m) == 511:
        m.advance(100_000)
    m.advance(1_600_000)
    left = count2(m)
    assert 511 - 110 <= left <= 511 - 90, left
    assert m.wait_irq(6, timeout_ns=1_000_000_000)
    assert result(m, 7) == [0x00, 0x00, 0x00, 1, 0, 1, 2]  # TC on the EOT sector: next ID C+1, R=1 (Table 5-6)
    assert m.mem_read(0x23000, 512) == sector(2) and m.mem_read(0x23200, 4) == b"\xee" * 4
    assert count2(m) == 0xFFFF and m.io_read(0x08) & 0x04
    assert not m.irq_level(6)  # the result phase clears it


def test_intel_read_to_eot_without_tc_is_abnormal_with_en():
    """A multi-sector READ that reaches EOT without TC: IC=01 and ST1.EN (docs/reference/devices.md §2.4)."""
    m, _ = machine()
    dma2(m, 0x46, 0x0000, 4095, page=3)  # room for 8 sectors, the command wants 2
    send(m, 0x46, 0x00, 0, 0, 1, 2, 2, 0x1B, 0xFF)
    assert m.wait_irq(6, timeout_ns=1_000_000_000)
    assert result(m, 7) == [0x40, 0x80, 0x00, 1, 0, 1, 2]  # EN; next ID C+1 R=1 (Table 5-6, MT=0)
    assert m.mem_read(0x30000, 1024) == sector(0) + sector(1)
    assert count2(m) == 4095 - 1024


def test_intel_multitrack_read_crosses_to_head_1():
    m, _ = machine()
    dma2(m, 0x46, 0x0000, 1023, page=4)
    send(m, 0xC6, 0x00, 0, 0, 18, 2, 18, 0x1B, 0xFF)  # MT: R18 of head 0, then R1 of head 1
    assert m.wait_irq(6, timeout_ns=2_000_000_000)
    assert result(m, 7) == [0x04, 0x00, 0x00, 0, 1, 2, 2]  # TC on head 1 R1: next R2, ST0 HD
    assert m.mem_read(0x40000, 1024) == sector(17) + sector(18)


def test_intel_masked_mid_sector_is_an_overrun():
    """Starving the FDC (channel masked mid-sector) gives ST1.OR, abnormal termination (§2.4)."""
    m, _ = machine()
    dma2(m, 0x46, 0x3000, 511)
    send(m, 0x66, 0x00, 0, 0, 1, 2, 1, 0x1B, 0xFF)
    while count2(m) == 511:
        m.advance(100_000)
    m.io_write(0x0A, 0x06)  # mask channel 2 mid-sector
    assert m.wait_irq(6, timeout_ns=1_000_000_000)
    st = result(m, 7)
    assert st[0] & 0xC0 == 0x40 and st[1] & 0x10, st


def test_intel_write_data_changes_the_disk():
    m, fdc = machine()
    payload = bytes((0xFF - i) & 0xFF for i in range(512))
    m.mem_write(0x24000, payload)
    dma2(m, 0x4A, 0x4000, 511)
    send(m, 0x45, 0x00, 0, 0, 5, 2, 5, 0x1B, 0xFF)  # WRITE DATA R5 = LBA 4
    assert m.wait_irq(6, timeout_ns=1_000_000_000)
    assert result(m, 7) == [0x00, 0x00, 0x00, 1, 0, 1, 2]
    disk = fdc.drives[0].disk
    assert disk is not None and disk.read(4) == payload and disk.read(5) == sector(5)
    assert disk.dirty and disk.changed == {4}


def test_intel_verify_transfer_type_moves_the_count_not_the_memory():
    """8237 verify (mode type 00): the FDC sees its DACKs, memory keeps its bytes
    (docs/reference/8237.md §2.5)."""
    m, _ = machine()
    m.mem_fill(0x23000, 512, 0xEE)
    dma2(m, 0x42, 0x3000, 511)
    send(m, 0x66, 0x00, 0, 0, 2, 2, 2, 0x1B, 0xFF)
    assert m.wait_irq(6, timeout_ns=1_000_000_000)
    assert result(m, 7)[:3] == [0, 0, 0]
    assert m.mem_read(0x23000, 512) == b"\xee" * 512 and count2(m) == 0xFFFF


def test_intel_verify_command_runs_without_dma():
    m, _ = machine()
    send(m, 0x56, 0x00, 0, 0, 1, 2, 3, 0x1B, 0xFF)  # VERIFY R1..EOT3, EC=0
    assert m.io_read(MSR) == 0x10
    assert m.wait_irq(6, timeout_ns=1_000_000_000)
    assert result(m, 7) == [0x00, 0x00, 0x00, 1, 0, 1, 2]


def test_intel_wrong_sector_size_finds_no_sector():
    m, _ = machine()
    dma2(m, 0x46, 0x3000, 511)
    send(m, 0x66, 0x00, 0, 0, 1, 3, 1, 0x1B, 0xFF)  # N=3: no ID on the disk matches
    assert m.wait_irq(6, timeout_ns=2_000_000_000)
    st = result(m, 7)
    assert st[0] == 0x40 and st[1] == 0x04


def test_intel_format_track_takes_four_id_bytes_per_sector():
    m, fdc = machine()
    ids = b"".join(bytes([0, 0, r, 2]) for r in range(1, 19))
    m.mem_write(0x25000, ids)
    dma2(m, 0x4A, 0x5000, len(ids) - 1)
    send(m, 0x4D, 0x00, 0x02, 18, 0x54, 0xF6)
    assert m.wait_irq(6, timeout_ns=2_000_000_000)
    assert result(m, 7)[:3] == [0, 0, 0]
    disk = fdc.drives[0].disk
    assert disk is not None and all(disk.read(n) == b"\xf6" * 512 for n in range(18)) and disk.read(18) == sector(18)


def test_intel_non_dma_mode_is_refused():
    m, _ = machine()
    send(m, 0x03, 0xAF, 0x03)  # ND = 1
    with pytest.raises(DeviceError, match="non-DMA mode"):
        send(m, 0x66, 0x00, 0, 0, 1, 2, 1, 0x1B, 0xFF)


def test_intel_data_rate_mismatch_is_missing_address_mark():
    m, _ = machine()
    m.io_write(DIR, 0x02)  # CCR: 250 kb/s on a 500 kb/s medium
    dma2(m, 0x46, 0x3000, 511)
    send(m, 0x66, 0x00, 0, 0, 1, 2, 1, 0x1B, 0xFF)
    assert m.wait_irq(6, timeout_ns=2_000_000_000)
    assert result(m, 7)[:2] == [0x40, 0x01]


# --- qemu profile (docs/reference/devices.md §2.5, docs/reference/qemu-qtest.md §6) ----------------------


def test_qemu_seeks_are_instant_and_format_does_nothing():
    m, fdc = machine("qemu")
    send(m, 0x0F, 0x00, 40)
    assert m.irq_level(6) and m.io_read(MSR) == 0x80  # no drive-busy bit, the interrupt at once
    send(m, 0x08)
    assert result(m, 2) == [0x20, 40]
    send(m, 0x4D, 0x00, 0x02, 18, 0x54, 0xF6)
    assert m.irq_level(6)
    assert result(m, 7)[:3] == [0, 0, 0]
    assert fdc.drives[0].disk is not None and not fdc.drives[0].disk.dirty


def test_qemu_dor_bit3_is_specifys_nd_bit():
    m, _ = machine("qemu")
    assert m.io_read(DOR) == 0x0C
    send(m, 0x03, 0xAF, 0x03)
    assert m.io_read(DOR) == 0x04  # ND=1 clears DMAEN
    send(m, 0x03, 0xAF, 0x02)
    assert m.io_read(DOR) == 0x0C
    send(m, 0x0E)
    assert result(m, 10)[5] == 0x03  # DUMPREG: HLT<<1 | DMA enabled


def test_qemu_no_en_at_eot_and_the_dma_length_ends_the_command():
    """docs/reference/qemu-qtest.md §6.3 'Partial transfer': no EN, ST0 0x20, C+1; 'Multi-sector read, short DMA
    count': the FDC stops at the DMA length with a normal result."""
    m, _ = machine("qemu")
    dma2(m, 0x46, 0x3000, 1023)
    send(m, 0x66, 0x00, 0, 0, 1, 2, 1, 0x1B, 0xFF)
    assert result(m, 7) == [0x20, 0x00, 0x00, 1, 0, 1, 2] and count2(m) == 0x01FF
    dma2(m, 0x46, 0x0000, 999, page=3)
    send(m, 0xE6, 0x00, 0, 0, 1, 2, 3, 0x1B, 0xFF)
    assert result(m, 7) == [0x20, 0x00, 0x00, 0, 0, 2, 2]  # SE: the implied seek back to C0
    assert m.mem_read(0x30000, 1001) == (sector(0) + sector(1))[:1000] + b"\x00"


def test_qemu_port_0x3f0_is_not_decoded():
    m, _ = machine("qemu")
    assert not m.decodes(0x3F0) and m.decodes(0x3F1) and not m.decodes(0x3F6) and m.decodes(0x3F7)
    m2, _ = machine("intel")
    assert m2.decodes(0x3F0) and not m2.decodes(0x3F6)


def test_both_profiles_read_the_same_sector_bytes():
    for profile in ("intel", "qemu"):
        m, _ = machine(profile)
        dma2(m, 0x46, 0x3000, 511)
        send(m, 0x66, 0x04, 0, 1, 7, 2, 7, 0x1B, 0xFF)  # head 1: C0 H1 R7 = LBA 24
        assert m.wait_irq(6, timeout_ns=1_000_000_000)
        result(m, 7)
        assert m.mem_read(0x23000, 512) == sector(24), profile


def test_controllers_by_profile_and_units():
    assert type(fdc_for("intel")) is FloppyController and type(fdc_for("qemu")) is QemuFloppyController
    with pytest.raises(DeviceError, match="unit 2"):
        QemuFloppyController({2: Disk(IMAGE)})
    with pytest.raises(DeviceError, match="not a raw image"):
        Disk(b"\0" * 1000)


def test_720k_image_needs_the_250k_rate():
    image = generated_image(GEOMETRIES[737_280])
    for profile in ("intel", "qemu"):
        m, _ = machine(profile, image)
        dma2(m, 0x46, 0x3000, 511)
        send(m, 0x66, 0x04, 0, 1, 2, 2, 2, 0x1B, 0xFF)
        assert m.wait_irq(6, timeout_ns=2_000_000_000)
        assert result(m, 7)[:2] == [0x44, 0x01], profile  # 500 kb/s on a 250 kb/s disk: MA (head 1)
        m.io_write(DIR, 0x02)
        dma2(m, 0x46, 0x3000, 511)
        send(m, 0x66, 0x04, 0, 1, 2, 2, 2, 0x1B, 0xFF)
        assert m.wait_irq(6, timeout_ns=2_000_000_000)
        assert result(m, 7)[0] & 0xC0 == 0, profile
        assert m.mem_read(0x23000, 512) == image[10 * SECTOR:11 * SECTOR], profile  # LBA 9 + 1


# --- the sim backend's option ------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["sim:?floppy=generate", "sim:?profile=qemu&floppy=generate"])
async def test_backend_option_and_capability(url: str):
    async with open_backend(url) as be:
        assert Capability.FDC in be.capabilities
        assert await be.execute([Out(0x3F5, 0x10), In(0x3F5)]) == [0x90]
    async with open_backend("sim") as be:
        assert Capability.FDC not in be.capabilities


def test_backend_option_errors(tmp_path: Path):
    with pytest.raises(BackendOptionError, match="no such image"):
        open_backend(f"sim:?floppy={tmp_path / 'missing.img'}")
    bad = tmp_path / "bad.img"
    bad.write_bytes(b"\0" * 4096)

    async def go() -> None:
        async with open_backend(f"sim:?floppy={bad}"):
            pass
    with pytest.raises(DeviceError, match="not a raw image"):
        asyncio.run(go())


@pytest.mark.parametrize("profile", ["intel", "qemu"])
@pytest.mark.parametrize("name", ["floppy-read", "floppy-write"])
async def test_the_fdc_examples_pass_on_both_profiles(name: str, profile: str):
    """The floppy examples (the Linux driver's sequences, run on QEMU's FDC too: docs/reference/qemu-qtest.md §6.1,
    §6.2) pass on the model; floppy-write leaves its payload in LBA 4 of the disk and LBA 5 as generated."""
    from hil.runner import run_script
    from hil.script import load_script

    async with open_backend(f"sim:?profile={profile}&floppy=generate") as be:
        result = await run_script(load_script(SCRIPTS / f"{name}.toml"), be)
        disk = be.fdc.drives[0].disk
        if name == "floppy-write":
            assert disk.read(4) == bytes.fromhex("deadbeef01234567") * 64
            assert disk.read(5) == bytes((13 * 5 + i) & 0xFF for i in range(512))
    assert result.status == "passed", (result.error, [(o.step, o.name, o.value, o.expect) for o in result.failures])


def test_read_id_intel_waits_for_the_next_id_qemu_after_20_ms():
    """READ ID: the first ID found (docs/reference/devices.md §2.2); QEMU completes it on a 20 ms timer with the
    current C/H and the next R (§2.5)."""
    m, _ = machine("intel")
    seek(m, 5)
    start = m.now_ns
    send(m, 0x4A, 0x04)
    assert m.io_read(MSR) == 0x10
    assert m.wait_irq(6, timeout_ns=1_000_000_000)
    assert m.now_ns - start <= 200_000_000 + 40_000_000  # within a revolution, after the head load
    st = result(m, 7)
    assert st[:5] == [0x04, 0, 0, 5, 1] and 1 <= st[5] <= 18 and st[6] == 2
    q, _ = machine("qemu")
    seek(q, 5)
    start = q.now_ns
    send(q, 0x4A, 0x04)
    assert not q.irq_level(6)
    assert q.wait_irq(6, timeout_ns=1_000_000_000)
    assert 20_000_000 <= q.now_ns - start <= 21_000_000
    assert result(q, 7) == [0x04, 0, 0, 5, 1, 2, 2]
