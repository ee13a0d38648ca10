"""Typed errors. Every error the package raises on purpose is a :class:`HilError`, defined here.

Messages name the value and the rule that refused it, so that a bench user can act on the
message alone; the CLI prints ``str(error)`` and never a traceback for these. Programs read the
fields (``status``, ``rule``, ``port``, ...), never the message. One refusal is one class on
every backend (the table is in README.md, "Errors"); the message may say how that backend
refuses it. The modules that raised these before they moved here import them from here, so
``hil.buffers.ZoneExhaustedError`` and the like still work.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

#: An agent protocol status (a :class:`hil.agent.protocol.Status` member). Typed by its base
#: class here: this module imports nothing of the package, so that anything may import it.
Status = enum.IntEnum

#: C0 and C1 control characters and DEL: a terminal acts on them (ANSI escapes start with ESC),
#: plus the Unicode bidi embeddings, overrides and isolates, which reorder what is shown
CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def escape_controls(text: str) -> str:
    """``text`` with every control character written as a Python escape (``\\x1b``), so that a
    message quoting a hostile name or path cannot drive the terminal it is printed on."""
    return CONTROL_CHARS.sub(lambda m: repr(m.group())[1:-1], text)


class HilError(Exception):
    """Base of every error raised by lpc-hil."""


class BatchError(HilError):
    """A program that carried several queued ones (``Backend.batched``) failed: ``error`` is
    what the backend raised, ``tag`` what the queued part it belongs to came from (the runner's
    step), so the failure is reported where it would have been without batching."""

    def __init__(self, tag: object, error: HilError) -> None:
        super().__init__(str(error))
        self.tag, self.error = tag, error


# --- bad input to a backend ----------------------------------------------------------------


class InvalidAccessError(HilError, ValueError):
    """An operation that no bus could perform: bad port, width or value."""


class InvalidPortError(InvalidAccessError):
    def __init__(self, port: object) -> None:
        super().__init__(f"port {port!r} is outside the x86 I/O space 0x0000..0xFFFF")
        self.port = port


class InvalidWidthError(InvalidAccessError):
    def __init__(self, width: object) -> None:
        super().__init__(f"access width {width!r} is not supported: use 8 or 16 bits")
        self.width = width


class ValueWidthError(InvalidAccessError):
    def __init__(self, value: object, width: int, port: int | None = None) -> None:
        where = f" for port 0x{port:04X}" if isinstance(port, int) else ""
        article = "an" if width == 8 else "a"
        super().__init__(f"value {value!r}{where} does not fit {article} {width}-bit access (0..0x{(1 << width) - 1:X})")
        self.value, self.width, self.port = value, width, port




class UndecodedPortError(HilError):
    """Raised in ``strict`` mode for an access to a port that nothing decodes."""

    def __init__(self, port: int, write: bool) -> None:
        verb = "write to" if write else "read of"
        super().__init__(f"{verb} port 0x{port:04X}: nothing on the bus decodes it (strict mode)")
        self.port, self.write = port, write


class AccessDeniedError(HilError):
    """A backend refused an access outside what it may touch: its port allow-list, a port whose
    write would stop the machine. ``index`` is the refused op's place in the program where the
    backend says (the agent does)."""

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class MemoryRangeError(AccessDeniedError):
    """Memory outside the backend's window (``Capabilities.memory_window``): past the end of the
    simulator's or the guest's RAM, outside devport's mapped window or the agent's. ``windows``
    are the ranges that may be reached; ``size`` is where the last of them ends."""

    def __init__(self, addr: int, length: int, size: int, what: str = "physical memory", *,
                 message: str | None = None, windows: Sequence[range] | None = None,
                 index: int | None = None) -> None:
        super().__init__(message if message is not None else (
            f"memory access 0x{addr:X}+0x{length:X} (ends at 0x{addr + length:X}) is outside "
            f"{what} 0x0..0x{size:X}"), index=index)
        self.addr, self.length, self.size = addr, length, size
        self.windows = tuple(windows) if windows is not None else (range(0, size),)


class WideAccessError(AccessDeniedError):
    """A 16-bit access to a port the backend reaches only byte-wide (the DMA and page ports on
    devport and qemu): refused rather than split, because the split is not one bus cycle."""

    def __init__(self, port: int, width: int, write: bool, reason: str, *, message: str | None = None) -> None:
        verb = "out to" if write else "in from"
        super().__init__(message if message is not None else f"{width}-bit {verb} port 0x{port:04X} refused: {reason}")
        self.port, self.width, self.write = port, width, write


# --- opening backends ----------------------------------------------------------------------


class BackendError(HilError):
    """A backend could not be opened or used."""


class UnknownBackendError(BackendError):
    def __init__(self, url: str, scheme: str, known: list[str]) -> None:
        super().__init__(f"backend URL {url!r}: unknown scheme {scheme!r}; known schemes: {', '.join(known)}")
        self.url, self.scheme = url, scheme


class BackendOptionError(BackendError):
    def __init__(self, url: str, message: str) -> None:
        super().__init__(f"backend URL {url!r}: {message}")
        self.url = url


class UnsupportedOperationError(BackendError):
    """A program holds an operation this backend cannot perform (refused before anything ran).
    Where the backend knows them: ``index`` and ``op`` name the op, ``agent`` the agent that
    lacks it and ``feature`` the feature bit it did not advertise."""

    def __init__(self, message: str, *, index: int | None = None, op: str | None = None, agent: str | None = None,
                 feature: str | None = None) -> None:
        super().__init__(message)
        self.index, self.op, self.agent, self.feature = index, op, agent, feature


class BackendClosedError(BackendError):
    """The backend was used after ``close()``. (Closing twice is not an error: the second
    ``close()`` does nothing, as for a file.)"""

    def __init__(self, name: str) -> None:
        super().__init__(f"backend {name} is closed")
        self.url = name


class BackendNotOpenError(BackendError):
    """The backend was used before ``open()`` (or ``async with``): on every backend, the
    simulator included, so a program that forgets to open fails on the bench as it does in CI."""

    def __init__(self, url: str, message: str | None = None) -> None:
        super().__init__(message if message is not None else
                         f"backend {url} is not open: use `async with open_backend(url)`")
        self.url = url


class SettleTimeout(BackendError):
    """DMA activity was still progressing when the settle limit was reached."""


class RecordFormatError(BackendError):
    """A session record (``record:`` / ``hil run --record``) cannot be read back: not JSON, or a
    line that is not what the recorder writes. ``line`` is its 1-based line number (0: unknown)."""

    def __init__(self, message: str, *, file: str = "", line: int = 0) -> None:
        where = f"{file}:{line}: " if file and line else f"{file}: " if file else ""
        super().__init__(where + message)
        self.file, self.line = file, line


class ReplayMismatchError(BackendError):
    """A replayed session was asked for something other than what was recorded: ``program`` is
    the 0-based index of the program that differs, ``op_index`` the op in it (None: the program
    count or length differs), ``step`` the script step that issued it, where a runner said."""

    def __init__(self, message: str, *, program: int, op_index: int | None = None, step: str | None = None) -> None:
        super().__init__(message)
        self.program, self.op_index, self.step = program, op_index, step


class WaveformError(BackendError):
    """A waveform (``hil run --vcd``) was asked of a backend with no simulator in this process."""


class DeviceError(HilError):
    """A simulated device was attached or used against the rules of the model."""


# --- driver layer: the DMA-ISA-LPC rules (docs/reference/linux-isa-dma.md §3) ------------------------------


class DmaRuleError(HilError):
    """A rule of the kernel's DMA-ISA-LPC document was broken. The channel stays masked."""

    def __init__(self, channel: int | None, message: str) -> None:
        prefix = f"DMA channel {channel}: " if channel is not None else ""
        super().__init__(prefix + message)
        self.channel = channel


class InvalidChannelError(DmaRuleError):
    pass


class CascadeChannelError(DmaRuleError):
    pass


class ChannelBusyError(DmaRuleError):
    pass


class ChannelNotRequestedError(DmaRuleError):
    pass


class AddressLimitError(DmaRuleError):
    pass


class BoundaryCrossingError(DmaRuleError):
    pass


class AlignmentError(DmaRuleError):
    pass


class TransferLengthError(DmaRuleError):
    pass


class ChannelNotProgrammedError(DmaRuleError):
    pass


class TransferIncompleteError(DmaRuleError):
    """The transfer did not reach terminal count in time; carries the residue."""

    def __init__(self, channel: int, residue: int, expected: int, timeout: float) -> None:
        super().__init__(
            channel,
            f"no terminal count within {timeout:g} s: residue {residue} of {expected} bytes "
            f"not transferred (check get_dma_residue after every transfer, DMA-ISA-LPC)",
        )
        self.residue, self.expected, self.timeout = residue, expected, timeout


class AllocationError(HilError):
    """The DMA zone could not satisfy a request."""


class AllocationTimeout(AllocationError):
    """No grant within the timeout. DmaZone sets these attributes for programs (the message is
    for people): the request, how far it got and the zone's state when it gave up."""

    sizes: tuple[int, ...]
    channel: int
    timeout: float
    obtained: int
    retries: int
    free_bytes: int
    largest_free: int


# --- reaching real hardware: diagnosed failures (devport:, later agent+serial:, qemu:) -------


class DiagnosedError(BackendError):
    """A backend could not reach its device, with the cause and the fix spelled out.

    Raised by ``open()`` so that the message alone tells a bench user what to change;
    ``hil doctor URL`` runs the same diagnosis without opening a session.
    """

    def __init__(self, problem: str, fix: str, *, path: str | None = None, errno: int | None = None) -> None:
        super().__init__(f"{problem}; fix: {fix}")
        self.problem, self.fix, self.path, self.errno = problem, fix, path, errno


class DeviceMissingError(DiagnosedError):
    """The device node does not exist or has no driver (kernel option off, not passed to a container)."""


class DevicePermissionError(DiagnosedError):
    """The node's mode refused us (EACCES), or a capability such as CAP_SYS_RAWIO is missing (EPERM)."""


class KernelLockdownError(DiagnosedError):
    """EPERM from a locked-down kernel (Secure Boot): /dev/port and /dev/mem are closed even to root."""


class StrictDevmemError(DiagnosedError):
    """/dev/mem refused to map the window (CONFIG_STRICT_DEVMEM for RAM, CONFIG_IO_STRICT_DEVMEM for claimed I/O memory)."""


class MemoryWindowError(DiagnosedError):
    """The configured physical memory window cannot be used as given."""


# --- backends: how each reaches its machine ----------------------------------------------


class QtestError(BackendError):
    """QEMU answered FAIL, or a reply did not have the expected form."""


class QemuExitedError(BackendError):
    """The QEMU process went away (EOF on the qtest socket)."""


class QemuNotFoundError(BackendError):
    """No usable qemu-system-x86_64."""


class QemuVersionError(BackendError):
    """The QEMU found is older than the one the backend was checked against."""


class QemuStartError(BackendError):
    """QEMU exited or did not connect while starting."""


class VmError(BackendError):
    """The ``vm:`` backend's virtual machine could not be set up, booted or reached."""


class VmKernelError(VmError):
    """No kernel for the VM: none given, none in the cache, or the one named is not a file."""


class VmImageError(VmError):
    """The guest's initramfs could not be built from this host's Python and package."""


class VmBootError(VmError):
    """The VM did not come up: QEMU exited, or the guest's agent did not answer in time.
    ``console`` holds the tail of the guest's console log, which says why."""

    def __init__(self, message: str, *, console: str = "") -> None:
        super().__init__(message)
        self.console = console


class QmpError(VmError):
    """QEMU's monitor refused a command (pause, resume, reset), or its connection failed."""


class LinkError(BackendError):
    """The link could not be opened or broke. ``device_missing``: the adapter or node it names
    is not there (pyftdi finds no USB device for the URL), which unplugging explains."""

    def __init__(self, message: str, *, device_missing: bool = False) -> None:
        super().__init__(message)
        self.device_missing = device_missing


class LabgridError(BackendError):
    """A labgrid coordinator could not be reached or refused, or a place cannot serve as a bench
    (unknown place, no serial port for the agent, its tags disagree with the agent)."""


class LabgridMissingError(LabgridError):
    """The ``labgrid`` package is not installed (it is the optional extra ``lpc-hil[labgrid]``)."""


class PlaceBusyError(LabgridError):
    """The place is held by someone else whose lock is not stale; ``place`` and ``holder``
    (labgrid's ``host/user``) name them. A pytest run turns this into a skip with its message."""

    def __init__(self, message: str, *, place: str = "", holder: str = "") -> None:
        super().__init__(message)
        self.place, self.holder = place, holder


class ProtocolError(HilError):
    """A frame or message that does not follow the agent protocol; ``status`` is the status to
    answer with, ``index`` the op it is about (0xFFFF: the whole message)."""

    def __init__(self, status: Status, message: str, index: int = 0xFFFF) -> None:
        super().__init__(message)
        self.status, self.index = status, index


class AgentError(BackendError):
    """The agent backend could not do what was asked (a malformed reply, an unexpected message)."""


class AgentTimeoutError(AgentError):
    """No reply within the timeout, retries included."""


class AgentResetError(AgentError):
    """The agent restarted: its controller state was lost and the program in flight may not
    have run. The driver layer restores its shadow state before this reaches the caller."""


def refusal_text(status: Status, index: int, reason: str) -> str:
    """How the agent backend words a refusal, whichever class carries it."""
    where = f" at op {index}" if index != 0xFFFF else ""
    return f"agent refused the program{where}: {status.name}: {reason}"


class AgentRefusedError(AgentError):
    """The agent answered with a refusal status that no backend-independent class names
    (AUTH, BUSY, VERSION, TOO_LARGE, IO_ERROR, UNSUPPORTED, ...): ``status`` is the protocol's
    code. Ports and memory outside what the agent advertised are :class:`AccessDeniedError`
    and :class:`MemoryRangeError`, as on every backend."""

    def __init__(self, status: Status, index: int, reason: str) -> None:
        super().__init__(refusal_text(status, index, reason))
        self.status, self.index, self.reason = status, index, reason


#: An op whose feature bit the agent did not advertise, refused by the host before any frame is
#: sent (docs/agent-protocol.md §3): the one class of that refusal, with its fields filled in.
AgentUnsupportedError = UnsupportedOperationError

#: The old name of the agent's port refusal: it is the one class every backend raises.
AgentAccessDenied = AccessDeniedError


class AllowListError(HilError):
    """The allow-list file or option is malformed."""


# --- the driver layer's register rules (hil.dma) -----------------------------------------


class FlipFlopError(DmaRuleError):
    """A 16-bit register access was attempted with the byte-pointer flip-flop set."""


class InvalidModeError(DmaRuleError):
    """A mode byte the driver layer does not program (docs/reference/8237.md §3)."""


class LockError(DmaRuleError):
    """The controller lock was used against its rules (released without being held)."""


# --- the DMA zone (hil.buffers) --------------------------------------------------------------


class ZoneConfigError(AllocationError, ValueError):
    """A zone window or backoff setting that no allocator could honour."""


class InvalidRequestError(AllocationError, ValueError):
    """An argument of a request (not a DMA rule) is malformed, e.g. a negative timeout."""


class ZoneTooSmallError(AllocationError):
    """The request could not be placed even if the whole zone were free.

    Raised at once rather than after a wait: it follows from the zone's geometry, so waiting
    would be forever. This is not a remembered limit; nothing learned from a failure is kept.
    """


class ZoneExhaustedError(AllocationError):
    """A ``*_nowait`` request could not be satisfied now; nothing was kept (all-or-nothing)."""


class DoubleFreeError(AllocationError):
    """The buffer was given out by this zone but has already been freed."""


class ForeignBufferError(AllocationError):
    """The buffer was not given out by this zone (another zone, or made by hand)."""


class ReservedBufferError(ForeignBufferError):
    """The buffer is a partial grant still held by a waiting :meth:`DmaZone.alloc_many`.

    Its requester has not received it yet; cancel that request to release it.
    """


# --- scripts, expressions, journals, deviations, the command line ----------------------------


class ExprError(HilError):
    """An expression in a script is not one the evaluator takes, or names what is not there."""


class ExprLimitError(ExprError):
    """An expression is over a size limit: text length or value magnitude."""


class ExprNameError(ExprError):
    """An expression names a variable, buffer or register that is not defined (``name``)."""

    def __init__(self, message: str, name: str) -> None:
        super().__init__(message)
        self.name = name


class ScriptError(HilError):
    """A transfer script is wrong. ``file``, ``step`` (path label), ``key`` say where. The
    message has its control characters escaped: it quotes names and paths from the script."""

    def __init__(self, file: str | Path, step: str | None, key: str | None, message: str, op: str | None = None):
        where = str(file)
        if step is not None:
            where += f": step {step}" + (f" ({op})" if op else "")
        if key is not None:
            where += f": key {key!r}"
        super().__init__(escape_controls(f"{where}: {message}"))
        self.file, self.step, self.key, self.detail = str(file), step, key, message


class ScriptSyntaxError(ScriptError):
    """The file is not valid TOML."""


class ScriptStructureError(ScriptError):
    """Unknown op, unknown key, missing key, misplaced table."""


class ScriptTypeError(ScriptError):
    """A value has the wrong type."""


class ScriptRangeError(ScriptError):
    """A value is out of range for its key."""


class ScriptNameError(ScriptError):
    """An expression names an unknown variable, buffer or register."""


class ScriptIncludeError(ScriptError):
    """An included fragment is missing or includes itself."""


class ScriptFileError(ScriptIncludeError):
    """A data or include file breaks a file rule: outside the allowed directories, not a regular
    file, too big, or a path that cannot name a file (NUL byte, symlink loop). ``rule`` says which."""

    def __init__(self, file: str | Path, step: str | None, key: str | None, message: str, op: str | None = None,
                 *, rule: str = ""):
        super().__init__(file, step, key, message, op)
        self.rule = rule


class ScriptLimitError(ScriptRangeError):
    """The script is over one of the loader's size limits (expanded steps, bytes, nesting,
    expression or name size). ``limit`` names the limit, ``maximum`` is its value."""

    def __init__(self, file: str | Path, step: str | None, key: str | None, message: str, op: str | None = None,
                 *, limit: str = "", maximum: int = 0):
        super().__init__(file, step, key, message, op)
        self.limit, self.maximum = limit, maximum


class ScriptCapabilityError(ScriptError):
    """The backend lacks a capability the script or a step requires."""


class ScriptRunFailedError(HilError):
    """A transfer script run as a pytest item (:mod:`hil.pytest_plugin`) did not pass: ``lines``
    are the runner's report, which the item prints as its failure."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


class JournalError(HilError):
    """A journal cannot be written where asked, or a file is not a journal at all."""


class DeviationFileError(HilError):
    """A deviations file (``hil diff --deviations``) is malformed."""


class UsageError(HilError):
    """The ``hil`` command line is wrong: argparse's error, sent back to ``hil.cli.main`` (which
    prints the parser's usage, the message, and under ``--json`` a JSON line) instead of exiting
    from deep inside argparse. A HilError because a program that drives ``build_parser()``
    itself catches it as it catches any other refusal."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser, self.message = parser, message


# --- errors across a process boundary (hil.workers) ----------------------------------------

_PLAIN = (str, int, float, bool, type(None))


def error_record(error: HilError) -> dict[str, object]:
    """``error`` as JSON-ready data: its class name, message and plain fields (an IntEnum such
    as ``status`` is written as its number), so that a process can hand its error to another."""
    fields = {k: v for k, v in vars(error).items() if isinstance(v, _PLAIN)}
    return {"type": type(error).__name__, "message": str(error), "fields": fields}


def error_from_record(record: object) -> HilError:
    """The typed error an :func:`error_record` describes: its class from this module (a plain
    :class:`HilError` for a name that is not one of ours), its message and fields restored
    without re-running the constructor, which wants the arguments, not the message."""
    if not isinstance(record, dict) or not isinstance(record.get("message"), str):
        return HilError(f"malformed error record {str(record)[:80]!r}")
    cls = globals().get(str(record.get("type")))
    if not (isinstance(cls, type) and issubclass(cls, HilError)):
        cls = HilError
    error = cls.__new__(cls)
    Exception.__init__(error, record["message"])
    fields = record.get("fields")
    if isinstance(fields, dict):
        error.__dict__.update({str(k): v for k, v in fields.items() if isinstance(v, _PLAIN)})
    return error

