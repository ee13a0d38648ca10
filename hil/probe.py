"""What DMA hardware a target has: the findings behind ``hil probe URL``.

A bench user's first question about a board is whether ISA/LPC DMA can work on it at all, and
with which device. :func:`probe` answers it through any backend, as a list of
:class:`Finding` records, each with the port accesses it rests on (:class:`Access`). Nothing
here prints; :mod:`hil.cli.probe` does.

Rules the probe keeps, because it runs on live boards:

* **Read-only by default.** Without ``active`` every access is a read, and only of registers a
  read does not change: the page file, the mask read-back, the channels' current address and
  count, the floppy controller's MSR/DOR/DIR, the parallel port's CTR and ECR, the DSP not at
  all. Not read without ``active``: the DMA status registers (a read clears their TC bits,
  docs/reference/8237.md §2.3) and the DSP's read-buffer status (a read acknowledges its IRQ,
  docs/reference/devices.md §5).
* **The flip-flop is left as found.** Every address or count register is read four times in
  one program (docs/reference/8237.md §2.1: each read toggles the controller's byte pointer), so
  the pointer ends where it started. The bytes are decoded assuming it started clear, as Linux
  leaves it after every sequence (docs/reference/linux-isa-dma.md §1.3); with ``active`` the
  probe clears it first (W 0x0C / 0xD8) and the order is certain.
* **Active steps restore what they change,** or refuse to start: the ECR test saves CTR and ECR
  and writes them back, and leaves a port in a FIFO mode (a driver's) alone; the Super I/O
  steps always send the exit sequence once an entry key went out, even after an error, and put
  the index register back as Linux's parport driver does.
* **The allow-list decides, not the probe.** Each step is one program, and a backend refuses a
  whole program before any of it runs (:meth:`hil.backends.base.Backend.check`); a refusal is a
  finding "not checked: outside the allow-list", never an error. A port nothing decodes (the
  simulator's ``strict=1``) is a finding "absent".

The facts behind each step: the 8237 and the chipset class docs/reference/devices.md §3 and
docs/reference/8237.md §1.3, §2.9, §5; the floppy controller docs/reference/devices.md §2; the
ECP port docs/reference/devices.md §1 (Linux's ECR-present test, §1.2; cnfgA/cnfgB, §1.3;
docs/reference/linux-isa-dma.md §2(c)); the DSP docs/reference/devices.md §5; the Super I/O
configuration ports docs/reference/devices.md §9.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import field
from functools import partial
from typing import Any

from hil.backends.base import Backend
from hil.errors import AccessDeniedError, HilError, UndecodedPortError
from hil.log import get_logger
from hil.ops import Delay, In, Op, Out, Poll, port_access
from hil.ports import CASCADE_CHANNEL, channel_ports
from hil.records import dataclass

log = get_logger("hil.probe")

#: the Linux rule (arch/x86/kernel/i8237.c; docs/reference/devices.md §3): the channel-0 page
#: register reads 0xFF when the chipset has no legacy DMA block (0x81 is avoided: POST cards)
DMA_PAGE_0 = 0x87
FLOAT = 0xFF  #: what a read of a port nothing drives returns on the ISA/LPC bus
LPT_BASES = (0x378, 0x278, 0x3BC)
ECP_OFFSET = 0x400  #: base_hi = base + 0x400 on ISA/LPC (docs/reference/devices.md §1.1)
SB_BASES = (0x220, 0x240, 0x260, 0x280)
SUPERIO_PORTS = (0x2E, 0x4E)
FDC_BASE = 0x3F0

NO_8237_HINT = ("ISA DMA cannot work on this target: use a board whose chipset still has the 8237 (Intel ICH "
                "up to the 9-series PCH, AMD FCH; docs/reference/devices.md §3 'Boards a bench engineer can "
                "use today'), or run the scripts on sim: or qemu:")


class Subject(enum.Enum):
    """What a finding is about."""

    DMA = "8237"
    CHIPSET = "chipset"
    CHANNEL = "channel"
    FDC = "fdc"
    ECP = "ecp"
    SB16 = "sb16"
    SUPERIO = "superio"


class Verdict(enum.Enum):
    FOUND = "found"  #: the hardware answers as the documented test expects
    ABSENT = "absent"  #: the test ran and nothing (of that kind) answered
    IN_USE = "in-use"  #: a DMA channel that looks set up or running
    IDLE = "idle"  #: a DMA channel that looks unused
    INFO = "info"  #: evidence that decides nothing by itself
    NOT_CHECKED = "not-checked"  #: refused by the allow-list, or needs --active
    ERROR = "error"  #: the backend failed during the step (the rest of the probe went on)


class ChipsetClass(enum.Enum):
    """What the register behaviour points to (docs/reference/8237.md §5; docs/reference/devices.md §3)."""

    NO_LEGACY_DMA = "no legacy DMA (Intel 100-series PCH or later, an eSPI platform, or an SoC without an 8237)"
    INTEL_STYLE = ("8237 pair with the Intel-style mask read-back at 0x0F/0xDE, DMA1 mirrored at 0x10-0x1F: an "
                   "Intel ICH/PCH up to the 9-series, an AMD FCH, or a model of one")
    QEMU_I8257 = "QEMU's i8257 (mask read at 0x09/0xD2, no DMA1 mirror, unused page slots not decoded)"
    UNKNOWN = "an 8237 answers, but its read-back matches neither the Intel nor the QEMU pattern"


@dataclass(frozen=True)
class Access:
    """One port access the evidence rests on: a read and what it returned, or a write."""

    port: int
    value: int
    write: bool = False

    def text(self) -> str:
        port = f"0x{self.port:02X}" if self.port < 0x100 else f"0x{self.port:04X}"
        return f"W {port}<-0x{self.value:02X}" if self.write else f"R {port}=0x{self.value:02X}"

    def to_json(self) -> dict[str, Any]:
        return {"port": self.port, "value": self.value, "op": "out" if self.write else "in"}


def _runs(evidence: Sequence[Access]) -> list[str]:
    """The accesses as text, consecutive reads of one port as one item (``R 0x00=0x12,0x34``)."""
    out: list[str] = []
    last: Access | None = None
    for a in evidence:
        if last is not None and not a.write and not last.write and a.port == last.port:
            out[-1] += f",0x{a.value:02X}"
        else:
            out.append(a.text())
        last = a
    return out


@dataclass(frozen=True)
class Finding:
    subject: Subject
    where: str  #: "ch2", "0x378", "0x2E", or "" for the target as a whole
    verdict: Verdict
    summary: str  #: one line: what was found, in words
    evidence: tuple[Access, ...] = ()
    hint: str = ""  #: what to do about it, where there is something to do
    detail: str = ""  #: the backend's own words (a refusal's message); in the JSON, not the line

    @property
    def name(self) -> str:
        return f"{self.subject.value} {self.where}" if self.where else self.subject.value

    def line(self, *, evidence: bool = True) -> str:
        text = f"{self.name}: {self.verdict.value}: {self.summary}"
        if evidence and self.evidence:
            text += " [" + " ".join(_runs(self.evidence)) + "]"
        if self.hint:
            text += f" -- {self.hint}"
        return text

    def to_json(self) -> dict[str, Any]:
        return {"subject": self.subject.value, "where": self.where, "verdict": self.verdict.value,
                "summary": self.summary, "evidence": [a.to_json() for a in self.evidence],
                **({"hint": self.hint} if self.hint else {}), **({"detail": self.detail} if self.detail else {})}


@dataclass(frozen=True)
class ProbeReport:
    url: str
    identity: str
    active: bool
    findings: tuple[Finding, ...]
    chipset: ChipsetClass | None = None  #: None: the 8237 test itself could not run

    @property
    def has_8237(self) -> bool:
        return any(f.subject is Subject.DMA and f.verdict is Verdict.FOUND for f in self.findings)

    @property
    def exit_code(self) -> int:
        """0: an 8237 answers; 1: none does, or the test was refused (DMA cannot be used)."""
        return 0 if self.has_8237 else 1

    def find(self, subject: Subject, where: str = "") -> Finding:
        """The finding for ``subject`` at ``where`` (KeyError if the probe made none)."""
        for f in self.findings:
            if f.subject is subject and f.where == where:
                return f
        raise KeyError(f"{subject.value} {where}".strip())

    def format(self) -> str:
        mode = "active" if self.active else "read-only"
        head = f"probe {self.url} ({self.identity}; {mode})"
        return "\n".join([head, *(f.line() for f in self.findings)])

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "identity": self.identity, "active": self.active, "has_8237": self.has_8237,
                "chipset": self.chipset.name.lower() if self.chipset else None,
                "findings": [f.to_json() for f in self.findings]}


# --- running steps ---------------------------------------------------------------------------


@dataclass
class _Session:
    """Runs a step's programs and keeps the accesses, in order, as the step's evidence."""

    be: Backend
    evidence: list[Access] = field(default_factory=list)

    def take(self) -> tuple[Access, ...]:
        out, self.evidence = tuple(self.evidence), []
        return out

    async def run(self, ops: Sequence[Op]) -> list[int]:
        """The values read, one per In/Poll, in order. Writes and reads go into the evidence."""
        results = await self.be.execute(list(ops))  # a refusal raises before any op ran
        values = [r for r in results if isinstance(r, int)]
        it = iter(values)
        for op in ops:
            if (io := port_access(op)) is not None:  # the op table says which port and whether it writes
                self.evidence.append(Access(io.port, io.value, write=True) if io.write else Access(io.port, next(it)))
        return values

    async def read(self, *ports: int) -> list[int]:
        return await self.run([In(p) for p in ports])


Step = Callable[[_Session], Awaitable[list[Finding]]]


def _refused(subject: Subject, where: str, ports: str, e: AccessDeniedError, evidence: tuple[Access, ...]) -> Finding:
    return Finding(subject, where, Verdict.NOT_CHECKED, "outside the allow-list", evidence,
                   f"allow ports {ports} to check it", detail=str(e))


async def _guarded(s: _Session, subject: Subject, where: str, ports: str, step: Step) -> list[Finding]:
    """Run one step; a refusal, an undecoded port or a backend failure is a finding of its own."""
    try:
        return await step(s)
    except AccessDeniedError as e:
        return [_refused(subject, where, ports, e, s.take())]
    except UndecodedPortError as e:
        return [Finding(subject, where, Verdict.ABSENT, f"nothing decodes port 0x{e.port:04X}", s.take())]
    except HilError as e:
        log.warning("probe_step_failed", subject=subject.value, where=where, error=str(e))
        return [Finding(subject, where, Verdict.ERROR, str(e), s.take())]


def _hex(value: int) -> str:
    return f"0x{value:02X}"


# --- the 8237 and the chipset class -----------------------------------------------------------


@dataclass(frozen=True)
class _DmaEvidence:
    page0: int
    mask1: int  #: R 0x0F (the mask on Intel chipsets)
    mask2: int  #: R 0xDE
    req1: int  #: R 0x09 (the mask on QEMU)
    req2: int  #: R 0xD2
    mirror: int  #: R 0x1F (DMA1's 0x0F again, where the mirror is decoded)
    spare_page: int  #: R 0x84, an unused page-file slot


def classify(ev: _DmaEvidence) -> ChipsetClass:
    """The chipset class the read-back points to (docs/reference/8237.md §5 rows 'Read 0x0F',
    'DMA1 mirror at 0x10-0x1F', 'Unused page ports 0x80,0x84-86,0x88,0x8C-8E')."""
    if ev.page0 == FLOAT:
        return ChipsetClass.NO_LEGACY_DMA
    if ev.mask1 & 0xF0 == 0 and ev.mask2 & 0xF0 == 0 and ev.mirror == ev.mask1:
        return ChipsetClass.INTEL_STYLE
    if ev.mask1 == 0 and ev.mask2 == 0 and ev.mirror == FLOAT and ev.spare_page == FLOAT:
        return ChipsetClass.QEMU_I8257
    return ChipsetClass.UNKNOWN


async def _float_if_undecoded(s: _Session, port: int) -> int:
    """A read whose "nothing decodes it" (the simulator's strict mode) counts as the 0xFF a real
    bus floats to: these reads are evidence for the chipset class, not tests of their own."""
    try:
        (value,) = await s.read(port)
    except UndecodedPortError:
        s.evidence.append(Access(port, FLOAT))
        return FLOAT
    return value


async def _dma(s: _Session) -> tuple[list[Finding], _DmaEvidence | None]:
    try:
        (page0,) = await s.read(DMA_PAGE_0)
        mask1, mask2, req1, req2 = [await _float_if_undecoded(s, p) for p in (0x0F, 0xDE, 0x09, 0xD2)]
        core = s.take()
        mirror, spare = [await _float_if_undecoded(s, p) for p in (0x1F, 0x84)]
    except AccessDeniedError as e:
        return [_refused(Subject.DMA, "", "0x00-0x1F, 0x80-0x8F, 0xC0-0xDF", e, s.take())], None
    except UndecodedPortError as e:
        return [Finding(Subject.DMA, "", Verdict.ABSENT, f"no 8237: nothing decodes port 0x{e.port:02X}", s.take(),
                        NO_8237_HINT)], None
    extra = s.take()
    ev = _DmaEvidence(page0, mask1, mask2, req1, req2, mirror, spare)
    cls = classify(ev)
    if cls is ChipsetClass.NO_LEGACY_DMA:
        dma = Finding(Subject.DMA, "", Verdict.ABSENT,
                      "no 8237: page register 0x87 reads 0xFF, Linux's test for a chipset whose legacy DMA block "
                      "was removed (Intel 100-series PCH and later; docs/reference/devices.md §3)", core, NO_8237_HINT)
    else:
        dma = Finding(Subject.DMA, "", Verdict.FOUND,
                      f"an 8237 pair answers: page register 0x87 reads {_hex(page0)}, not 0xFF "
                      f"(docs/reference/devices.md §3)", core)
    chip = Finding(Subject.CHIPSET, "", Verdict.INFO, cls.value, core + extra,
                   "the PCI vendor of the LPC bridge (lspci -nn) tells Intel from AMD; the probe does not read PCI"
                   if cls is ChipsetClass.INTEL_STYLE else "")
    return [dma, chip], ev


# --- which channels look in use ---------------------------------------------------------------


def _pair(reads: Sequence[int]) -> tuple[int | None, str]:
    """A 16-bit register read four times: its value if the reads repeat (a, b, a, b), else None
    and why (the register moved between reads: a transfer is running)."""
    a, b, c, d = reads
    if (a, b) != (c, d):
        return None, "changed between reads"
    return a | b << 8, ""


async def _channels(s: _Session, ev: _DmaEvidence, cls: ChipsetClass, active: bool) -> list[Finding]:
    mask_port: dict[int, int]
    raw_mask: dict[int, int]
    match cls:
        case ChipsetClass.INTEL_STYLE:
            mask_port, raw_mask = {0: 0x0F, 4: 0xDE}, {0: ev.mask1, 4: ev.mask2}
        case ChipsetClass.QEMU_I8257:
            mask_port, raw_mask = {0: 0x09, 4: 0xD2}, {0: ev.req1, 4: ev.req2}
        case _:
            mask_port, raw_mask = {}, {}
    masks: dict[int, int | None] = {k: raw_mask[k] & 0x0F if mask_port else None for k in (0, 4)}
    mask_where = f"0x{mask_port[0]:02X}/0x{mask_port[4]:02X}" if mask_port else ""
    findings: list[Finding] = []
    status: dict[int, int] = {}
    if active:  # a status read clears the TC bits: only when asked (docs/reference/8237.md §2.3)
        status[0], status[4] = await s.read(0x08, 0xD0)
        findings.append(Finding(Subject.DMA, "status", Verdict.INFO,
                                f"status DMA1 {_hex(status[0])} DMA2 {_hex(status[4])} (bits 7:4 request, 3:0 TC; "
                                f"this read cleared the TC bits)", s.take()))
    for first in (0, 4):
        if first == CASCADE_CHANNEL:
            read = Access(mask_port[first], raw_mask[first]) if mask_port else None
            findings.append(_cascade_finding(masks[first], mask_where, read, gates=cls is ChipsetClass.INTEL_STYLE))
        chans = [ch for ch in range(first, first + 4) if ch != CASCADE_CHANNEL]
        ops: list[Op] = [Out(0x0C if first == 0 else 0xD8, 0)] if active else []  # clear the flip-flop
        for ch in chans:
            p = channel_ports(ch)
            ops += [In(p.addr)] * 4 + [In(p.count)] * 4 + [In(p.page)]
        values = await s.run(ops)
        shared = s.take()
        for i, ch in enumerate(chans):
            p = channel_ports(ch)
            mask_read = (Access(mask_port[first], raw_mask[first]),) if mask_port else ()
            evidence = mask_read + tuple(a for a in shared if a.write or a.port in (p.addr, p.count, p.page))
            findings.append(_channel_finding(ch, values[9 * i: 9 * i + 9], masks[first], mask_where,
                                             status.get(first), evidence))
    return findings


def _cascade_finding(mask: int | None, where: str, read: Access | None, *, gates: bool) -> Finding:
    unreadable = "its mode register is write-only, so cascade mode itself cannot be read back"
    if mask is None or read is None:
        return Finding(Subject.CHANNEL, "ch4", Verdict.INFO, f"cascade: mask state unknown on this controller; {unreadable}")
    ev = (read,)
    if mask & 1:
        effect = ("channels 0-3 cannot reach memory until it is unmasked" if gates else
                  "QEMU's i8257 does not gate channels 0-3 on it (docs/reference/8237.md §5 row 'Mask ch4 blocks ch0-3')")
        return Finding(Subject.CHANNEL, "ch4", Verdict.IDLE, f"cascade masked (mask {where}): {effect}; {unreadable}", ev,
                       "set it up as an AT BIOS does (configs/scripts/fragments/at-bios-cascade.toml)")
    return Finding(Subject.CHANNEL, "ch4", Verdict.IN_USE,
                   f"cascade unmasked, as a BIOS leaves it (DMA1's channels reach memory through it); {unreadable}", ev)


def _channel_finding(ch: int, v: Sequence[int], mask_bits: int | None, mask_where: str, status: int | None,
                     evidence: tuple[Access, ...]) -> Finding:
    addr, addr_note = _pair(v[0:4])
    count, count_note = _pair(v[4:8])
    page = v[8]
    local = ch & 3
    regs = (f"address {f'0x{addr:04X}' if addr is not None else addr_note}, "
            f"count {f'0x{count:04X}' if count is not None else count_note}, page {_hex(page)}")
    if status is not None:
        regs += f", request {'on' if status >> (4 + local) & 1 else 'off'}, TC {'set' if status >> local & 1 else 'clear'}"
    if addr is None or count is None:
        return Finding(Subject.CHANNEL, f"ch{ch}", Verdict.IN_USE, f"a transfer is running: {regs}", evidence)
    if mask_bits is None:
        return Finding(Subject.CHANNEL, f"ch{ch}", Verdict.INFO, f"mask unknown on this controller; {regs}", evidence)
    if not mask_bits >> local & 1:
        return Finding(Subject.CHANNEL, f"ch{ch}", Verdict.IN_USE,
                       f"unmasked (mask {mask_where}): a transfer is set up or running; {regs}", evidence,
                       "a driver may own it (Linux: cat /proc/dma)")
    programmed = " (programmed earlier)" if (addr or page) and count != 0xFFFF else ""
    return Finding(Subject.CHANNEL, f"ch{ch}", Verdict.IDLE, f"masked{programmed}; {regs}", evidence)


# --- floppy controller ------------------------------------------------------------------------


async def _fdc(s: _Session, active: bool) -> list[Finding]:
    dor, msr, dir_ = await s.read(FDC_BASE + 2, FDC_BASE + 4, FDC_BASE + 7)
    seen = s.take()
    where = f"0x{FDC_BASE:03X}"
    if msr == FLOAT:
        return [Finding(Subject.FDC, where, Verdict.ABSENT, "no floppy controller: MSR (0x3F4) reads 0xFF", seen)]
    state = f"MSR {_hex(msr)}, DOR {_hex(dor)} (DMA gate {'on' if dor & 0x08 else 'off'}), DIR {_hex(dir_)}"
    if not dor & 0x04:
        return [Finding(Subject.FDC, where, Verdict.FOUND, f"a floppy controller, held in reset (DOR bit 2 clear): {state}",
                        seen)]
    if msr & 0xD0 != 0x80:  # RQM with DIO=0 and not busy: ready for a command
        return [Finding(Subject.FDC, where, Verdict.FOUND,
                        f"a floppy controller, busy (a command or result phase is under way): {state}", seen,
                        "VERSION was not sent: a driver may be using it")]
    if not active:
        return [Finding(Subject.FDC, where, Verdict.FOUND, f"a floppy controller, idle and ready (RQM): {state}", seen,
                        "--active sends VERSION to tell an 82077AA-class controller from a uPD765")]
    # VERSION (docs/reference/devices.md §2.2): one command byte, one result byte
    values = await s.run([Out(FDC_BASE + 5, 0x10), Poll(FDC_BASE + 4, 0xC0, 0xC0, 10_000),
                          In(FDC_BASE + 5), Poll(FDC_BASE + 4, 0xD0, 0x80, 10_000)])
    seen += s.take()
    ready, version, after = values
    match version:
        case 0x90 if ready & 0xC0 == 0xC0:
            kind = "an enhanced controller (82077AA class; VERSION 0x90)"
        case 0x80 if ready & 0xC0 == 0xC0:
            kind = "a uPD765A/B-class controller (VERSION is an invalid command there: ST0 0x80)"
        case _:
            kind = f"no valid VERSION result ({_hex(version)}, MSR {_hex(ready)})"
    idle = "" if after & 0xD0 == 0x80 else f"; MSR afterwards {_hex(after)}, not idle"
    return [Finding(Subject.FDC, where, Verdict.FOUND, f"a floppy controller: {kind}; before: {state}{idle}", seen)]


# --- ECP parallel port ------------------------------------------------------------------------

ECR_MODES = ("SPP", "PS/2", "PPF (FIFO)", "ECP (FIFO)", "EPP", "vendor", "FIFO test", "configuration")
CNFGB_IRQ = (None, 7, 9, 10, 11, 14, 15, 5)  #: Linux's intrline table (docs/reference/devices.md §1.3)


def decode_cnfgb(value: int) -> tuple[str, str]:
    """IRQ and DMA as cnfgB reports them (docs/reference/devices.md §1.3)."""
    irq = CNFGB_IRQ[value >> 3 & 7]
    dma = value & 7
    irq_text = f"IRQ {irq}" if irq is not None else "IRQ jumpered"
    match dma:
        case 0:
            dma_text = "DMA jumpered (8-bit)"
        case 4:
            dma_text = "DMA jumpered (16-bit)"
        case _:
            dma_text = f"DMA {dma}"
    return irq_text, dma_text


def decode_cnfga(value: int) -> str:
    match value >> 4 & 7:
        case 1:
            word = "8-bit"
        case 0:
            word = "16-bit"
        case 2:
            word = "32-bit"
        case other:
            word = f"unknown implementation id {other}"
    return f"{word} FIFO, {'level' if value & 0x80 else 'pulsed'} interrupts"


async def _ecp(s: _Session, base: int, active: bool) -> list[Finding]:
    ctr_port, ecr_port = base + 2, base + ECP_OFFSET + 2
    ctr, ecr = await s.read(ctr_port, ecr_port)
    seen = s.take()
    where = f"0x{base:03X}"
    if ctr == FLOAT and ecr == FLOAT:
        return [Finding(Subject.ECP, where, Verdict.ABSENT, f"no parallel port: CTR and ECR (0x{ecr_port:03X}) read 0xFF",
                        seen)]
    if ecr == FLOAT:
        return [Finding(Subject.ECP, where, Verdict.ABSENT,
                        f"a parallel port without an ECR (0x{ecr_port:03X} reads 0xFF): no ECP FIFO, no DMA", seen)]
    mode = ecr >> 5
    looks = (f"ECR {_hex(ecr)}: mode {mode:03b} {ECR_MODES[mode]}, "
             f"{'empty' if ecr & 1 else 'not empty'}, {'full' if ecr & 2 else 'not full'}")
    if not active:
        alias = " (equal to CTR: maybe CTR seen again through 10-bit decoding)" if ecr == ctr else ""
        return [Finding(Subject.ECP, where, Verdict.INFO, f"something answers at the ECR: {looks}{alias}", seen,
                        "--active runs Linux's ECR-present test (writes CTR and ECR, then restores them)")]
    in_fifo_mode = (f"an ECR in a FIFO mode ({looks}): a driver is using the port; ECR not touched")
    if mode >= 2 and ecr != ctr:  # equal to CTR it may be CTR itself, aliased: the alias test decides
        return [Finding(Subject.ECP, where, Verdict.FOUND, in_fifo_mode, seen)]
    test = _EcrTest(s, base, ctr, ecr)
    try:
        return await test.run(where, seen, looks, in_fifo_mode)
    finally:
        await test.restore()


@dataclass
class _EcrTest:
    """Linux's parport_ECR_present (docs/reference/devices.md §1.2), then cnfgA/cnfgB in mode
    111 (§1.3); :meth:`restore` writes back what the test wrote, CTR always, ECR if it wrote it."""

    s: _Session
    base: int
    ctr: int  #: as found
    ecr: int  #: as found
    wrote_ecr: bool = False

    @property
    def ctr_port(self) -> int:
        return self.base + 2

    @property
    def ecr_port(self) -> int:
        return self.base + ECP_OFFSET + 2

    async def run(self, where: str, seen: tuple[Access, ...], looks: str, in_fifo_mode: str) -> list[Finding]:
        s, ctr_port, ecr_port = self.s, self.ctr_port, self.ecr_port
        ecr1, _ = await s.run([Out(ctr_port, 0x0C), In(ecr_port), In(ctr_port)])
        if ecr1 & 3 == 0x0C & 3:  # the low bits match CTR's: toggle CTR bit 1 and see if "ECR" follows
            ctr2, ecr2 = await s.run([Out(ctr_port, 0x0E), In(ctr_port), In(ecr_port)])
            if ecr2 & 2 == ctr2 & 2:
                return [Finding(Subject.ECP, where, Verdict.ABSENT,
                                "no ECR: the ECR port follows CTR (an alias of it), as Linux's test concludes; "
                                "CTR restored", seen + s.take())]
        if ecr1 >> 5 >= 2:
            return [Finding(Subject.ECP, where, Verdict.FOUND, in_fifo_mode + "; CTR restored", seen + s.take())]
        (ecr3,) = await s.run([Out(ctr_port, 0x0C), In(ecr_port)])
        if ecr3 & 3 != 1:
            return [Finding(Subject.ECP, where, Verdict.ABSENT,
                            f"no ECR: its low bits read {ecr3 & 3:02b}, not 01 (FIFO empty, not full)", seen + s.take())]
        self.wrote_ecr = True
        (ecr4,) = await s.run([Out(ecr_port, 0x34), In(ecr_port)])
        if ecr4 != 0x35:
            return [Finding(Subject.ECP, where, Verdict.ABSENT, f"no ECR: wrote 0x34, read {_hex(ecr4)} (not 0x35)",
                            seen + s.take())]
        cnfga, cnfgb = await s.run([Out(ecr_port, 0xF4), In(self.base + ECP_OFFSET), In(self.base + ECP_OFFSET + 1)])
        irq, dma = decode_cnfgb(cnfgb)
        hi = self.base + ECP_OFFSET
        return [Finding(Subject.ECP, where, Verdict.FOUND,
                        f"an ECP port: ECR present (wrote 0x34, read 0x35; before: {looks}); cnfgA {_hex(cnfga)} "
                        f"({decode_cnfga(cnfga)}), cnfgB {_hex(cnfgb)} ({irq}, {dma}); CTR and ECR restored",
                        seen + s.take(),
                        f"allow-list for ECP scripts: 0x{self.base:X}-0x{self.base + 7:X}, 0x{hi:X}-0x{hi + 2:X}")]

    async def restore(self) -> None:
        ops = ([Out(self.ecr_port, self.ecr)] if self.wrote_ecr else []) + [Out(self.ctr_port, self.ctr)]
        try:
            await self.s.run(ops)
        except HilError as e:  # the test's ports were allowed, so this is a failure
            log.warning("probe_ecp_restore_failed", port=f"0x{self.base:03X}", error=str(e))


# --- Sound Blaster DSP ------------------------------------------------------------------------


async def _sb16(s: _Session, base: int) -> list[Finding]:
    where = f"0x{base:03X}"
    # the reset handshake (docs/reference/devices.md §5): write 1, wait >= 3 us, write 0, 0xAA follows
    ready, data = await s.run([Out(base + 6, 1), Delay(3), Out(base + 6, 0),
                               Poll(base + 0xE, 0x80, 0x80, 1000), In(base + 0xA)])
    if not ready & 0x80 or data != 0xAA:
        return [Finding(Subject.SB16, where, Verdict.ABSENT,
                        f"no DSP: after the reset pulse 0x{base + 0xE:03X} reads {_hex(ready)} and "
                        f"0x{base + 0xA:03X} {_hex(data)} (want bit 7 and 0xAA)", s.take())]
    values = await s.run([Poll(base + 0xC, 0x80, 0x00, 1000), Out(base + 0xC, 0xE1),
                          Poll(base + 0xE, 0x80, 0x80, 1000), In(base + 0xA),
                          Poll(base + 0xE, 0x80, 0x80, 1000), In(base + 0xA),
                          Out(base + 4, 0x80), In(base + 5), Out(base + 4, 0x81), In(base + 5)])
    major, minor, irq_sel, dma_sel = values[2], values[4], values[5], values[6]
    irqs = [n for bit, n in enumerate((2, 5, 7, 10)) if irq_sel >> bit & 1]
    dmas = [n for bit, n in ((0, 0), (1, 1), (3, 3), (5, 5), (6, 6), (7, 7)) if dma_sel >> bit & 1]
    model = "an SB16" if major == 4 else "not an SB16 (DSP major version is not 4)"
    return [Finding(Subject.SB16, where, Verdict.FOUND,
                    f"a Sound Blaster DSP, version {major}.{minor:02d} ({model}); mixer 0x80 {_hex(irq_sel)} "
                    f"(IRQ {', '.join(map(str, irqs)) or 'none'}), 0x81 {_hex(dma_sel)} "
                    f"(DMA {', '.join(map(str, dmas)) or 'none'})", s.take())]


# --- Super I/O --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SuperIoFamily:
    """How one vendor's chips open and close their configuration registers
    (docs/reference/devices.md §9)."""

    name: str
    key: Callable[[int], tuple[int, ...]]  #: entry bytes written to the index port
    exit: Callable[[int], list[Op]]
    lpt_ldn: int  #: the parallel port's logical device number


WINBOND = SuperIoFamily("Winbond/Nuvoton", lambda port: (0x87, 0x87), lambda port: [Out(port, 0xAA)], 1)
ITE = SuperIoFamily("ITE", lambda port: (0x87, 0x01, 0x55, 0x55 if port == 0x2E else 0xAA),
                    lambda port: [Out(port, 0x02), Out(port + 1, 0x02)], 3)
FAMILIES = (WINBOND, ITE)

#: chip IDs (registers 0x20:0x21, revision in the low nibble) from Linux's nct6775 / w83627ehf drivers
WINBOND_IDS = {0x8850: "W83627EHF", 0x8860: "W83627EHG", 0xA020: "W83627DHG", 0xB070: "W83627DHG-P",
               0xA230: "W83627UHG", 0xA510: "W83667HG", 0xB350: "W83667HG-B", 0xB470: "NCT6775F",
               0xC330: "NCT6776", 0xC560: "NCT6779D", 0xC800: "NCT6791D", 0xC910: "NCT6792D",
               0xD120: "NCT6793D", 0xD350: "NCT6795D", 0xD420: "NCT6796D"}


def chip_name(family: SuperIoFamily, chip_id: int) -> str:
    if family is ITE:
        return f"IT{chip_id:04X}" if chip_id >> 8 in (0x85, 0x86, 0x87) else "unknown ITE ID"
    return WINBOND_IDS.get(chip_id & 0xFFF0, "unknown ID")


def _reg(port: int, index: int) -> list[Op]:
    return [Out(port, index), In(port + 1)]


async def _superio(s: _Session, port: int) -> list[Finding]:
    where = f"0x{port:02X}"
    # what the ID registers answer without a key (Linux's winbond_check compares the two)
    orig, base_hi, base_lo = await s.run([In(port), *_reg(port, 0x20), *_reg(port, 0x21)])
    for family in FAMILIES:
        refused = False
        try:
            entry = [Out(port, b) for b in family.key(port)] + _reg(port, 0x20) + _reg(port, 0x21) + _reg(port, 0x07)
            try:
                hi, lo, ldn = await s.run(entry)
            except AccessDeniedError:
                refused = True  # checked before any of it ran: no key byte went out
                raise
            chip_id = hi << 8 | lo
            if chip_id in (0xFFFF, 0x0000) or (hi, lo) == (base_hi, base_lo):
                continue
            lpt = await s.run([Out(port, 0x07), Out(port + 1, family.lpt_ldn), *_reg(port, 0x30), *_reg(port, 0x60),
                               *_reg(port, 0x61), *_reg(port, 0x70), *_reg(port, 0x74),
                               Out(port, 0x07), Out(port + 1, ldn)])
            return [_superio_finding(family, where, chip_id, lpt, s.take())]
        finally:
            if not refused:  # a key byte may have reached the chip: exit, whatever happened since
                await _superio_exit(s, port, family, orig)
    if (base_hi, base_lo) not in ((FLOAT, FLOAT), (0, 0)):
        return [Finding(Subject.SUPERIO, where, Verdict.INFO,
                        f"registers 0x20/0x21 read 0x{base_hi << 8 | base_lo:04X} with and without an entry key: "
                        f"a chip left in configuration mode, or not a Super I/O index/data pair", s.take())]
    return [Finding(Subject.SUPERIO, where, Verdict.ABSENT,
                    "no Super I/O answered: with either entry key (Winbond/Nuvoton 87 87, ITE 87 01 55 55/AA) the "
                    "chip ID registers 0x20/0x21 read as without one", s.take())]


async def _superio_exit(s: _Session, port: int, family: SuperIoFamily, orig: int) -> None:
    try:
        await s.run([*family.exit(port), Out(port, orig)])  # then the index back, as Linux does
    except HilError as e:
        log.error("probe_superio_exit_failed", port=f"0x{port:02X}", family=family.name, error=str(e),
                  note="the chip may still be in configuration mode; a power cycle leaves it")


def _superio_finding(family: SuperIoFamily, where: str, chip_id: int, lpt: Sequence[int],
                     evidence: tuple[Access, ...]) -> Finding:
    active, base_hi, base_lo, irq, dma = lpt
    dma_text = f"DMA {dma & 7}" if dma & 7 <= 3 else f"no DMA (CR74 {_hex(dma)})"
    lpt_text = (f"LPT (LDN {family.lpt_ldn}): {'active' if active & 1 else 'inactive'}, base 0x{base_hi << 8 | base_lo:03X}, "
                f"IRQ {irq & 0x0F}, {dma_text} (register 0x74 {_hex(dma)})")
    return Finding(Subject.SUPERIO, where, Verdict.FOUND,
                   f"{family.name} Super I/O, chip ID 0x{chip_id:04X} ({chip_name(family, chip_id)}); {lpt_text}; "
                   f"configuration mode exited", evidence)


# --- the probe --------------------------------------------------------------------------------


async def probe(be: Backend, *, active: bool = False) -> ProbeReport:
    """Probe ``be`` (opened) for DMA hardware; read-only unless ``active``. See the module
    docstring for what each step touches."""
    s = _Session(be)
    caps = be.capabilities
    log.info("probe_start", url=be.url, active=active)
    dma, ev = await _dma(s)
    findings = list(dma)
    cls = classify(ev) if ev is not None else None
    if ev is not None and cls is not None and cls is not ChipsetClass.NO_LEGACY_DMA:
        findings += await _guarded(s, Subject.CHANNEL, "", "0x00-0x0F, 0x80-0x8F, 0xC0-0xDF",
                                   lambda s: _channels(s, ev, cls, active))
    findings += await _guarded(s, Subject.FDC, "0x3F0", "0x3F0-0x3F7", lambda s: _fdc(s, active))
    for base in LPT_BASES:
        hi = base + ECP_OFFSET
        findings += await _guarded(s, Subject.ECP, f"0x{base:03X}", f"0x{base:X}-0x{base + 7:X}, 0x{hi:X}-0x{hi + 2:X}",
                                   partial(_ecp, base=base, active=active))
    if active:
        for base in SB_BASES:
            findings += await _guarded(s, Subject.SB16, f"0x{base:03X}", f"0x{base:X}-0x{base + 0xF:X}",
                                       partial(_sb16, base=base))
        for port in SUPERIO_PORTS:
            findings += await _guarded(s, Subject.SUPERIO, f"0x{port:02X}", f"0x{port:X}-0x{port + 1:X}",
                                       partial(_superio, port=port))
    else:
        findings.append(Finding(Subject.SB16, "0x220-0x280", Verdict.NOT_CHECKED,
                                "needs --active: the DSP reset handshake resets the DSP (stopping any playback)"))
        findings.append(Finding(Subject.SUPERIO, "0x2E/0x4E", Verdict.NOT_CHECKED,
                                "needs --active and an allow-list with 0x2E-0x2F / 0x4E-0x4F: the entry keys write "
                                "the configuration ports"))
    log.info("probe_done", url=be.url, findings=len(findings))
    return ProbeReport(be.url, caps.identity, active, tuple(findings), cls)


__all__ = ["Access", "ChipsetClass", "Finding", "ProbeReport", "Subject", "Verdict", "classify", "decode_cnfga",
           "decode_cnfgb", "probe"]
