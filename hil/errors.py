"""Typed errors. Every error the package raises on purpose is a :class:`HilError`.

Messages name the value and the rule that refused it, so that a bench user can act on the
message alone; the CLI prints ``str(error)`` and never a traceback for these.
"""

from __future__ import annotations


class HilError(Exception):
    """Base of every error raised by lpc-hil."""


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


class MemoryRangeError(InvalidAccessError):
    def __init__(self, addr: int, length: int, size: int, what: str = "physical memory") -> None:
        super().__init__(
            f"memory access 0x{addr:X}+0x{length:X} (ends at 0x{addr + length:X}) is outside "
            f"{what} 0x0..0x{size:X}"
        )
        self.addr, self.length, self.size = addr, length, size


class UndecodedPortError(HilError):
    """Raised in ``strict`` mode for an access to a port that nothing decodes."""

    def __init__(self, port: int, write: bool) -> None:
        verb = "write to" if write else "read of"
        super().__init__(f"{verb} port 0x{port:04X}: nothing on the bus decodes it (strict mode)")
        self.port, self.write = port, write


class AccessDeniedError(HilError):
    """A hardware backend refused an access outside its allow-list."""


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
    """A program holds an operation this backend cannot perform (refused before anything ran)."""


class BackendClosedError(BackendError):
    def __init__(self, name: str) -> None:
        super().__init__(f"backend {name} is closed")


class SettleTimeout(BackendError):
    """DMA activity was still progressing when the settle limit was reached."""


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


class WideAccessError(AccessDeniedError):
    """A backend refused a port access wider than it can perform as one bus cycle."""

    def __init__(self, port: int, width: int, write: bool, reason: str) -> None:
        verb = "out to" if write else "in from"
        super().__init__(f"{width}-bit {verb} port 0x{port:04X} refused: {reason}")
        self.port, self.width, self.write = port, width, write
