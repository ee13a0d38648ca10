"""``devport:`` over ordinary files standing in for /dev/port and /dev/mem (docs/reference/hil-lessons.md §1.2, §3.21).

No test touches this machine's ports: the backend's syscalls go through an injectable
:class:`hil.backends.devport.Host`, and the files have the same offset semantics as the
devices (offset = port number, offset = physical address). A recorder around ``pwrite`` and
``pread`` checks exact offsets, sizes and order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, given, settings, strategies as st

from hil.allowlist import AllowList
from hil.backends import BackendURL, available_backends, open_backend
from hil.backends.base import Capability
from hil.backends.devport import DevPortBackend, Host, MaskTracker, from_url, parse_window
from hil.dma import DMA_MODE_READ, IsaDma
from hil.errors import (
    AccessDeniedError,
    BackendError,
    BackendOptionError,
    DeviceMissingError,
    DevicePermissionError,
    KernelLockdownError,
    MemoryWindowError,
    SettleTimeout,
    StrictDevmemError,
    WideAccessError,
)
from hil.ops import Delay, In, MemFill, MemRead, MemWrite, Out, Poll

PORT_SIZE = 0x10000
MEM_SIZE = 0x100000
WINDOW = "0x10000-0x90000"

# The Linux floppy driver's programming of channel 2 (docs/reference/linux-isa-dma.md §1.3): disable, clear FF,
# mode 0x44|2, page 0x12 + address 0x3400, count 0x2400-1, enable.
FLOPPY = [(0x0A, 0x06), (0x0C, 0x00), (0x0B, 0x46), (0x81, 0x12), (0x04, 0x00), (0x04, 0x34),
          (0x05, 0xFF), (0x05, 0x23), (0x0A, 0x02)]


class Recorder:
    """A Host whose port syscalls are recorded (and optionally scripted)."""

    def __init__(self, tmp: Path, *, reads: dict[int, list[int]] | None = None, **overrides: Any) -> None:
        self.log: list[tuple[str, int, int | None]] = []  # ("W", port, value) / ("R", port, None)
        self.sizes: list[int] = []
        self.threads: set[str] = set()
        self.opened: list[str] = []
        self.closed: list[int] = []
        self.reads = reads or {}
        lockdown = tmp / "lockdown"
        lockdown.write_text("[none] integrity confidentiality\n")
        self.host = Host(open=self._open, close=self._close, pread=self._pread, pwrite=self._pwrite,
                         lockdown_path=str(lockdown), proc_status_path=str(tmp / "no-status"),
                         iomem_path=str(tmp / "no-iomem"))
        if overrides:
            self.host = dataclasses.replace(self.host, **overrides)

    def _open(self, path: str, flags: int) -> int:
        self.opened.append(path)
        return os.open(path, flags)

    def _close(self, fd: int) -> None:
        self.closed.append(fd)
        os.close(fd)

    def _pread(self, fd: int, n: int, off: int) -> bytes:
        self.threads.add(threading.current_thread().name)
        self.sizes.append(n)
        self.log.append(("R", off, None))
        scripted = self.reads.get(off)
        if scripted:
            return bytes((scripted.pop(0) if len(scripted) > 1 else scripted[0],))
        return os.pread(fd, n, off)

    def _pwrite(self, fd: int, data: bytes, off: int) -> int:
        self.threads.add(threading.current_thread().name)
        self.sizes.append(len(data))
        self.log.append(("W", off, data[0]))
        return os.pwrite(fd, data, off)

    @property
    def writes(self) -> list[tuple[int, int]]:
        return [(p, v) for k, p, v in self.log if k == "W"]  # type: ignore[misc]


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    port, mem = tmp_path / "port", tmp_path / "mem"
    port.write_bytes(bytes(PORT_SIZE))
    mem.write_bytes(bytes(MEM_SIZE))
    return port, mem


def url_for(files: tuple[Path, Path], extra: str = f"&window={WINDOW}") -> str:
    return f"devport:?port={files[0]}&mem={files[1]}{extra}"


def make(files: tuple[Path, Path], rec: Recorder | None, extra: str = f"&window={WINDOW}") -> DevPortBackend:
    return from_url(BackendURL.parse(url_for(files, extra)), rec.host if rec else None)


# --- exact traffic of the Linux API ----------------------------------------------------------


async def test_floppy_sequence_is_exactly_those_byte_writes(files, tmp_path):
    rec = Recorder(tmp_path)
    async with make(files, rec) as be:
        dma = IsaDma(be)
        await dma.request_dma(2, "floppy")
        async with dma.claim_dma_lock():
            await dma.disable_dma(2)
            await dma.clear_dma_ff(2)
            await dma.set_dma_mode(2, DMA_MODE_READ)
            await dma.set_dma_addr(2, 0x123400)
            await dma.set_dma_count(2, 0x2400)
            await dma.enable_dma(2)
        await dma.disable_dma(2)
    assert rec.writes[: len(FLOPPY)] == FLOPPY
    assert rec.writes[len(FLOPPY):] == [(0x0A, 0x06)]  # our disable; nothing left enabled to mask on close
    assert all(n == 1 for n in rec.sizes), "every access is one byte: never spread over consecutive ports"
    assert not [e for e in rec.log if e[0] == "R"]
    data = files[0].read_bytes()
    assert (data[0x0A], data[0x0B], data[0x0C], data[0x81], data[0x04], data[0x05]) == (0x06, 0x46, 0x00, 0x12, 0x34, 0x23)
    assert rec.threads == {t for t in rec.threads if t.startswith("hil-devport")}


async def test_16bit_channel_program_uses_byte_pairs_on_the_same_ports(files, tmp_path):
    rec = Recorder(tmp_path)
    async with make(files, rec) as be:
        dma = IsaDma(be)
        await dma.request_dma(5, "sb16")
        async with dma.claim_dma_lock():
            await dma.program(5, DMA_MODE_READ, 0x244000, 0x1000)
    # mask, clear FF, mode, page (bit 0 dropped), word address 0x2000 LSB/MSB, words-1 LSB/MSB, unmask,
    # then the close: channel 5 was enabled by this session, so it is masked again
    assert rec.writes == [(0xD4, 0x05), (0xD8, 0x00), (0xD6, 0x45), (0x8B, 0x24), (0xC4, 0x00), (0xC4, 0x20),
                          (0xC6, 0xFF), (0xC6, 0x07), (0xD4, 0x01), (0xD4, 0x05)]
    assert set(rec.sizes) == {1}


async def test_residue_reads_the_count_port_twice_one_byte_each(files, tmp_path):
    rec = Recorder(tmp_path, reads={0x05: [0x10, 0x02]})
    async with make(files, rec) as be:
        dma = IsaDma(be, unchecked=True)
        await dma.clear_dma_ff(2)
        assert await dma.get_dma_residue(2) == 1 + 0x10 + (0x02 << 8)
    assert rec.log == [("W", 0x0C, 0), ("R", 0x05, None), ("R", 0x05, None)]
    assert rec.sizes == [1, 1, 1]


# --- width policy and allow-list: refused before any op runs ---------------------------------


async def test_16bit_port_access_refused_whole_program(files, tmp_path):
    rec = Recorder(tmp_path)
    async with make(files, rec) as be:
        with pytest.raises(WideAccessError, match=r"16-bit out to port 0x00C4.*same port"):
            await be.outw(0xC4, 0x1234)
        with pytest.raises(WideAccessError, match=r"16-bit in from port 0x0008"):
            await be.execute([Out(0x0C, 0), In(0x08, 16)])
        with pytest.raises(WideAccessError):
            await be.execute([Poll(0x08, 0xFF, 0, 10, width=16)])
    assert rec.log == []
    assert be.capabilities.details["port_widths"] == [8]


async def test_port_outside_allow_list_refused_before_kernel(files, tmp_path):
    rec = Recorder(tmp_path)
    async with make(files, rec) as be:
        with pytest.raises(AccessDeniedError, match="0x03F2"):
            await be.execute([Out(0x0A, 0x06), Out(0x3F2, 0x1C)])
        with pytest.raises(AccessDeniedError, match="memory 0x8FFFF"):
            await be.execute([Out(0x0A, 0x06), MemWrite(0x8FFFF, b"ab")])
    assert rec.log == []


async def test_extra_ports_opt_in_by_allow_file(files, tmp_path):
    allow = tmp_path / "allow.toml"
    allow.write_text('[ports]\nextra = ["0x3F0-0x3F7"]\n[memory]\nwindows = ["0x20000-0x30000"]\n')
    rec = Recorder(tmp_path)
    async with make(files, rec, f"&allow={allow}") as be:
        await be.outb(0x3F2, 0x1C)
        await be.write_mem(0x20000, b"\x01")
        with pytest.raises(AccessDeniedError):
            await be.write_mem(0x30000, b"\x01")  # mapped window comes from the allow-list hull
        assert be.capabilities.memory_window == (0x20000, 0x30000)
    assert rec.writes == [(0x3F2, 0x1C)]


PORTS = st.one_of(st.integers(0, 0xFFFF), st.sampled_from([0x00, 0x0A, 0x1F, 0x20, 0x7F, 0x80, 0x8F, 0x90,
                                                           0xBF, 0xC0, 0xDF, 0xE0, 0x3F0, 0x480]))
ADDRS = st.one_of(st.integers(0, MEM_SIZE - 1), st.sampled_from([0xFFFF, 0x10000, 0x8FFFF, 0x90000]))
OPS = st.one_of(
    st.builds(Out, PORTS, st.integers(0, 0xFF)),
    st.builds(In, PORTS),
    st.builds(lambda a, d: MemWrite(a, d), ADDRS, st.binary(min_size=1, max_size=8)),
    st.builds(MemRead, ADDRS, st.integers(1, 8)),
    st.builds(MemFill, ADDRS, st.integers(1, 8), st.integers(0, 0xFF)),
)


class RecordingMap:
    """Stands in for the mmap of /dev/mem: records every slice the backend touches."""

    def __init__(self, length: int) -> None:
        self.buf = bytearray(length)
        self.touched: list[range] = []

    def __getitem__(self, s: slice) -> bytes:
        self.touched.append(range(s.start, s.stop))
        return bytes(self.buf[s])

    def __setitem__(self, s: slice, data: bytes) -> None:
        self.touched.append(range(s.start, s.stop))
        self.buf[s] = data

    def close(self) -> None:
        pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(programs=st.lists(st.lists(OPS, min_size=1, max_size=6), min_size=1, max_size=4))
def test_nothing_outside_the_allow_lists_reaches_the_files(files, tmp_path, programs):
    maps: list[tuple[RecordingMap, int]] = []

    def fake_mmap(fd: int, length: int, offset: int) -> RecordingMap:
        m = RecordingMap(length)
        maps.append((m, offset))
        return m

    rec = Recorder(tmp_path, mmap=fake_mmap)
    allowed_ports = AllowList.default()
    files[0].write_bytes(bytes(PORT_SIZE))

    async def body() -> None:
        async with make(files, rec) as be:
            for program in programs:
                before_log, before_mem = len(rec.log), len(maps[0][0].touched)
                try:
                    await be.execute(program)
                except AccessDeniedError:
                    assert len(rec.log) == before_log and len(maps[0][0].touched) == before_mem, \
                        "a refused program must not run any of its ops"

    asyncio.run(body())
    for _, port, _ in rec.log:
        assert allowed_ports.port_allowed(port), f"port 0x{port:X} reached the file"
    assert set(rec.sizes) <= {1}
    (m, base), = maps
    for r in m.touched:
        assert 0x10000 <= base + r.start and base + r.stop <= 0x90000, f"memory {r} outside the window"
    data = files[0].read_bytes()
    written = {p for p in range(PORT_SIZE) if data[p]}  # the few bytes programs wrote, not 65,536 checks
    assert all(allowed_ports.port_allowed(p) for p in written), sorted(p for p in written if not allowed_ports.port_allowed(p))


# --- dry run ------------------------------------------------------------------------------------


def _forbidden(*_: Any) -> Any:
    raise AssertionError("dry run touched the OS")


async def test_dry_run_performs_nothing_and_logs_every_access(files, tmp_path):
    rec = Recorder(tmp_path, open=_forbidden, pread=_forbidden, pwrite=_forbidden, mmap=_forbidden)
    before = files[0].read_bytes(), files[1].read_bytes()
    with structlog.testing.capture_logs() as logs:
        async with make(files, rec, f"&window={WINDOW}&dry_run=1") as be:
            dma = IsaDma(be)
            await dma.request_dma(2, "floppy")
            async with dma.claim_dma_lock():
                await dma.disable_dma(2)
                await dma.clear_dma_ff(2)
                await dma.set_dma_mode(2, DMA_MODE_READ)
                await dma.set_dma_addr(2, 0x123400)
                await dma.set_dma_count(2, 0x2400)
                await dma.enable_dma(2)
            assert await be.inb(0x08) == 0xFF
            assert await be.read_mem(0x20000, 4) == b"\xff" * 4
            await be.write_mem(0x20000, b"abcd")
            assert Capability.REAL_TIMING not in be.capabilities
    dry = [e for e in logs if e["event"] == "devport_dry_run"]
    outs = [(int(e["port"], 16), int(e["value"], 16)) for e in dry if e["op"] == "out"]
    assert outs == [*FLOPPY, (0x0A, 0x06)]  # ... and the would-be safe-state mask on close
    assert [e["op"] for e in dry if e["op"] != "out"] == ["in", "read", "write"]
    assert (files[0].read_bytes(), files[1].read_bytes()) == before


# --- safe state on close --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("session", "masked_on_close"),
    [
        ([(0x0A, 0x02)], [(0x0A, 0x06)]),  # single mask: channel 2 unmasked
        ([(0x0A, 0x02), (0x0A, 0x06)], []),  # ... and masked again by the user
        ([(0xDC, 0x00)], [(0xD4, 0x05), (0xD4, 0x06), (0xD4, 0x07)]),  # clear mask DMA2: not the cascade (4)
        ([(0x0F, 0x0E)], [(0x0A, 0x04)]),  # write-all-mask: channel 0 unmasked
        ([(0x1A, 0x01)], [(0x0A, 0x05)]),  # through DMA1's mirror: still channel 1
        ([(0x0E, 0x00), (0x0D, 0x00)], []),  # clear mask, then master clear masks all
        ([(0xD4, 0x00)], []),  # the cascade is never masked by us
    ],
)
async def test_close_masks_the_channels_this_session_enabled(files, tmp_path, session, masked_on_close):
    rec = Recorder(tmp_path)
    async with make(files, rec) as be:
        await be.execute([Out(p, v) for p, v in session])
    assert rec.writes == session + masked_on_close


def test_mask_tracker_reports_enabled_channels():
    t = MaskTracker()
    t.observe(0xDC, 0)
    t.observe(0xD4, 0x06)
    assert t.enabled == {4, 5, 7}
    t.observe(0xDA, 0)
    assert t.enabled == set()


# --- memory window ----------------------------------------------------------------------------


async def test_memory_goes_to_the_physical_offset(files, tmp_path):
    async with make(files, Recorder(tmp_path)) as be:
        await be.write_mem(0x23400, b"\x11\x22\x33")
        await be.fill_mem(0x8FFF0, 0x10, 0xAB)
        assert await be.read_mem(0x23400, 3) == b"\x11\x22\x33"
        assert be.capabilities.memory_window == (0x10000, 0x90000)
    data = files[1].read_bytes()
    assert data[0x23400:0x23403] == b"\x11\x22\x33"
    assert data[0x8FFF0:0x90000] == b"\xab" * 16 and data[0x90000] == 0


async def test_unaligned_window_maps_the_page_hull_but_allows_only_the_window(files, tmp_path):
    async with make(files, Recorder(tmp_path), "&window=0x10010+0x20") as be:
        await be.write_mem(0x10010, b"x" * 0x20)
        with pytest.raises(AccessDeniedError):
            await be.write_mem(0x1000F, b"x")
    assert files[1].read_bytes()[0x10010:0x10030] == b"x" * 0x20


async def test_no_window_refuses_memory_but_allows_ports(files, tmp_path):
    rec = Recorder(tmp_path)
    async with make(files, rec, "") as be:
        await be.outb(0x0C, 0)
        with pytest.raises(AccessDeniedError, match="none configured"):
            await be.read_mem(0x10000, 1)
    assert str(files[1]) not in rec.opened


async def test_stand_in_file_too_short_for_window(files, tmp_path):
    files[1].write_bytes(bytes(0x20000))
    rec = Recorder(tmp_path)
    with pytest.raises(MemoryWindowError, match="ends beyond"):
        async with make(files, rec):
            pass
    assert len(rec.closed) == 2, "both descriptors are released when open fails"


# --- open failures carry their diagnosis -------------------------------------------------------


def _raiser(code: int, only: str | None = None) -> Any:
    def fail(path: str, flags: int) -> int:
        if only is None or path.endswith(only):
            raise OSError(code, os.strerror(code), path)
        return os.open(path, flags)
    return fail


@pytest.mark.parametrize(
    ("code", "lockdown", "status", "error", "words"),
    [
        (errno.ENOENT, "[none]", None, DeviceMissingError, "CONFIG_DEVPORT"),
        (errno.EACCES, "[none]", None, DevicePermissionError, "run as root"),
        (errno.EPERM, "none [integrity] confidentiality", None, KernelLockdownError, "Secure Boot"),
        (errno.EPERM, "[none] integrity", "CapEff:\t0000000000000000\n", DevicePermissionError, "CAP_SYS_RAWIO"),
    ],
)
async def test_open_raises_the_specific_diagnosis(files, tmp_path, code, lockdown, status, error, words):
    (tmp_path / "ld").write_text(lockdown)
    (tmp_path / "status").write_text(status or "CapEff:\t000001ffffffffff\n")
    rec = Recorder(tmp_path, open=_raiser(code), lockdown_path=str(tmp_path / "ld"),
                   proc_status_path=str(tmp_path / "status"))
    be = make(files, rec)
    with pytest.raises(error, match=words) as info:
        await be.open()
    assert info.value.errno == code and info.value.fix
    assert str(files[0]) in str(info.value)
    await be.close()


async def test_mmap_refused_by_strict_devmem(files, tmp_path):
    iomem = tmp_path / "iomem"
    iomem.write_text("00000000-00000fff : Reserved\n00001000-0009fbff : System RAM\n")

    def refuse(fd: int, length: int, offset: int) -> Any:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    rec = Recorder(tmp_path, mmap=refuse, iomem_path=str(iomem))
    with pytest.raises(StrictDevmemError, match=r"System RAM.*STRICT_DEVMEM") as info:
        async with make(files, rec):
            pass
    assert "memmap=0x80000$0x10000" in info.value.fix
    assert len(rec.closed) == 2


# --- threading, time, settle --------------------------------------------------------------------


async def test_programs_never_interleave(files, tmp_path):
    rec = Recorder(tmp_path)
    async with make(files, rec) as be:
        progs = [[Out(0x80 + i, j) for j in range(20)] for i in range(8)]
        await asyncio.gather(*(be.execute(p) for p in progs))
    runs = [rec.writes[k: k + 20] for k in range(0, len(rec.writes), 20)]
    assert sorted(runs) == sorted([(0x80 + i, j) for j in range(20)] for i in range(8))


async def test_delay_and_poll_use_wall_clock(files, tmp_path):
    rec = Recorder(tmp_path, reads={0x08: [0x00, 0x00, 0x04]})
    async with make(files, rec) as be:
        t0 = time.perf_counter()
        await be.execute([Delay(3000)])
        assert time.perf_counter() - t0 >= 0.003
        assert await be.execute([Poll(0x08, 0x04, 0x04, timeout_us=1e6, interval_us=50)]) == [0x04]
        t0 = time.perf_counter()
        assert await be.execute([Poll(0x0D, 0xFF, 0x55, timeout_us=5000, interval_us=500)]) == [0x00]
        assert time.perf_counter() - t0 >= 0.005


async def test_settle_reads_counts_in_pairs_after_clearing_the_flip_flop(files, tmp_path):
    rec = Recorder(tmp_path, reads={0x05: [0x30, 0x00, 0x20, 0x00, 0x10, 0x00, 0x10, 0x00]})
    async with make(files, rec) as be:
        await be.settle()
        assert rec.log == [], "nothing enabled by us: nothing to poll"
        await be.outb(0x0A, 0x02)
        await be.settle()
    reads = rec.log[1:-1]
    assert reads[:3] == [("W", 0x0C, 0), ("R", 0x05, None), ("R", 0x05, None)]
    assert len(reads) == 4 * 3 and all(e[1] != 0x08 for e in reads), "status is never read: TC bits survive"


async def test_settle_times_out_while_counts_move(files, tmp_path):
    counter = iter(range(1 << 20))
    rec = Recorder(tmp_path)
    moving = dataclasses.replace(rec.host, pread=lambda fd, n, off: bytes((next(counter) & 0xFF,)))
    be = from_url(BackendURL.parse(url_for(files)), moving)
    async with be:
        await be.outb(0x0A, 0x01)
        with pytest.raises(SettleTimeout, match="still changing"):
            await be.settle(0.02)


# --- URL, registry, life cycle ----------------------------------------------------------------


def test_registry_and_capabilities():
    assert "devport" in available_backends()
    be = open_backend(f"devport:?window={WINDOW}")
    assert isinstance(be, DevPortBackend)
    caps = be.capabilities
    assert caps.memory_window == (0x10000, 0x90000) and Capability.REAL_TIMING in caps
    assert "window=0x10000-0x90000" in caps.identity


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("devport:?bogus=1", "unknown option 'bogus'"),
        ("devport:?window=0x90000-0x10000", "empty"),
        ("devport:?window=0x100000-0x1100000", "16 MiB"),
        ("devport:?window=lots", "START-END"),
        ("devport:?dry_run=maybe", "expected 0 or 1"),
        ("devport:/dev/port", "not a path"),
        ("devport:?port=", "needs a file name"),
    ],
)
def test_bad_options(url, words):
    with pytest.raises(BackendOptionError, match=words):
        open_backend(url)


def test_parse_window_forms():
    assert parse_window("0x10000-0x90000") == range(0x10000, 0x90000)
    assert parse_window("0x10000+0x80000") == range(0x10000, 0x90000)
    assert parse_window("0x10000 0x80000") == range(0x10000, 0x90000)  # "+" after URL decoding


async def test_execute_needs_open(files, tmp_path):
    be = make(files, Recorder(tmp_path))
    with pytest.raises(BackendError, match="not open"):
        await be.outb(0x0C, 0)


async def test_direct_construction_clips_the_allow_list_to_the_mapped_window(files, tmp_path):
    wide = AllowList.default([range(0x0, 0x100000)])
    be = DevPortBackend(port_path=str(files[0]), mem_path=str(files[1]), window=range(0x20000, 0x30000),
                        allow=wide, host=Recorder(tmp_path).host)
    assert be.allow.memory == (range(0x20000, 0x30000),)
    async with be:
        with pytest.raises(AccessDeniedError):
            await be.read_mem(0x1F000, 1)  # below the mapping: a negative slice offset would wrap
    assert DevPortBackend(allow=wide).allow.memory == ()  # nothing mapped, no memory allowed


async def test_operations_it_cannot_do_are_refused_not_skipped(tmp_path):
    """A simulated-device op on real hardware is an error before anything runs; Settle becomes
    the backend's own settle(), between the parts of the program, under the one lock."""
    from hil.errors import UnsupportedOperationError
    from hil.ops import DevAttach, In, Out, Settle

    port, mem = tmp_path / "port", tmp_path / "mem"
    port.write_bytes(bytes(0x10000))
    mem.write_bytes(bytes(0x100000))
    async with open_backend(f"devport:?port={port}&mem={mem}&window=0x10000-0x90000") as be:
        with pytest.raises(UnsupportedOperationError, match=r"DevAttach.*sim"):
            await be.execute([Out(0x81, 0x12), DevAttach(2, "source", b"x")])
        assert port.read_bytes()[0x81] == 0  # nothing ran
        assert await be.execute([Out(0x81, 0x34), Settle(1000), In(0x81)]) == [0x34]
