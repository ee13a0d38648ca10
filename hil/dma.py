"""Linux's ISA DMA API (``asm/dma.h``, ``kernel/dma.c``), asynchronous, over any backend.

Each method emits exactly the port accesses Linux emits (docs/reference/linux-isa-dma.md §1.3), as one
``execute()`` program, so one programming step is one round trip on a link. Unlike the kernel,
which trusts the driver, :class:`IsaDma` checks the rules of Documentation/DMA-ISA-LPC before it
unmasks a channel (buffer below 16 MiB, no 64/128 KiB crossing, 16-bit alignment, length,
channel requested, channel 4 untouchable); a broken rule raises its own
:class:`~hil.errors.DmaRuleError` and the channel stays masked. ``unchecked=True`` (on the
instance or per call) lets people probing hardware behaviour do what Linux would do.

The 8237's mode, command and mask registers are write-only, so the controller state is kept
as a shadow of everything programmed through this class; :meth:`IsaDma.suspend` and
:meth:`IsaDma.resume` use it, and so does the automatic restore after a backend reports that
the far side was reset. The shadow, the channel table and the DMA lock belong to the backend
(one controller pair), shared by every :class:`IsaDma` on it, as the kernel's are global.
"""

from __future__ import annotations

import asyncio
import copy
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import field

from hil.backends.base import Backend, Capability
from hil.errors import (
    ChannelBusyError,
    ChannelNotProgrammedError,
    ChannelNotRequestedError,
    DmaRuleError,
    FlipFlopError,
    InvalidModeError,
    LockError,
    TransferIncompleteError,
)
from hil.log import get_logger
from hil.ops import In, Op, Out
from hil.ports import (
    CASCADE_CHANNEL,
    CONTROLLERS,
    DMA2,
    MASK_SET,
    MODE_CHANNEL_MASK,
    MODE_DECREMENT,
    PAGE_PORT,
    ChannelPorts,
    ControllerPorts,
    Ctrl,
    Mode,
    ModeSelect,
    TransferType,
    channel_ports,
    controller_of,
)
from hil.records import dataclass
from hil.rules import check_buffer, check_channel

log = get_logger("hil.dma")

#: the byte writes this driver builds, each made (and validated by :class:`Out`) once: ops are
#: immutable, and the driver writes a few dozen DMA and page ports with byte values, so the table
#: stays small, and programming a channel costs dictionary look-ups instead of nine validations
_OUTS: dict[int, Out] = {}


def _out(port: int, value: int) -> Out:
    """``Out(port, value)`` for the driver's own byte writes (ints it computed, already masked)."""
    if value >> 8:  # not a byte (negative included): Out refuses it as it would anyway
        return Out(port, value)
    key = port << 8 | value
    op = _OUTS.get(key)
    if op is None:
        op = _OUTS[key] = Out(port, value)
    return op


@dataclass(frozen=True, slots=True)
class _Wiring:
    """One channel's ports and fixed writes, made once (``channel_ports`` builds them per call)."""

    ports: ChannelPorts
    ctrl: ControllerPorts
    index: int  #: the controller, as an index into the per-controller lists
    mask_set: Out
    mask_clear: Out
    clear_ff: Out
    count_read: In  #: one byte of the current count (a residue is two of them)


def _wiring(channel: int) -> _Wiring:
    ctrl = controller_of(channel)
    ports = channel_ports(channel)
    return _Wiring(ports, ctrl, int(ctrl.ctrl), _out(ctrl.single_mask, (channel & 3) | MASK_SET),
                   _out(ctrl.single_mask, channel & 3), _out(ctrl.clear_ff, 0), In(ports.count))


_WIRING: tuple[_Wiring, ...] = tuple(_wiring(ch) for ch in range(8))
#: each controller's status read, as a one-op program (``wait_dma_done`` polls it)
_STATUS_READ: tuple[tuple[In], ...] = tuple((In(ports.status),) for ports in CONTROLLERS)
_CASCADE_SELECT = ModeSelect.CASCADE.value  #: a plain int: an enum member's look-up costs more than the test

MAX_DMA_CHANNELS = 8
DMA_MODE_READ = 0x44  #: I/O -> memory, single, increment, no autoinit
DMA_MODE_WRITE = 0x48  #: memory -> I/O, single, increment, no autoinit
DMA_MODE_CASCADE = 0xC0  #: pass DREQ -> HRQ, DACK <- HLDA (bus masters)
DMA_AUTOINIT = 0x10


# --- shadow state -----------------------------------------------------------------------


@dataclass
class ChannelShadow:
    """What was last programmed on one channel (None = never programmed through us)."""

    mode: int | None = None  #: the mode byte as written (channel bits included)
    page: int | None = None  #: page register value as written
    addr_reg: int | None = None  #: 16-bit address register as written (bytes lo, hi)
    count_reg: int | None = None  #: 16-bit count register as written
    phys: int | None = None  #: byte address given to set_dma_addr
    nbytes: int | None = None  #: byte count given to set_dma_count
    masked: bool = True


@dataclass
class DmaSnapshot:
    """Everything needed to put the controllers back: returned by :meth:`IsaDma.suspend`."""

    command: list[int] = field(default_factory=lambda: [0, 0])
    channels: list[ChannelShadow] = field(default_factory=lambda: [ChannelShadow() for _ in range(8)])
    residues: dict[int, int] = field(default_factory=dict)  #: owned channels' residue at suspend


@dataclass(frozen=True)
class TransferResult:
    channel: int
    tc: bool
    residue: int  #: bytes not transferred (kernel arithmetic)
    expected: int  #: bytes programmed
    elapsed_s: float

    @property
    def complete(self) -> bool:
        return self.tc and self.residue == 0


class _ControllerState:
    """Per-backend state: the kernel's dma_chan_busy table, the lock, the shadow."""

    def __init__(self) -> None:
        self.busy: dict[int, str] = {CASCADE_CHANNEL: "cascade"}
        self.lock = asyncio.Lock()
        self.owner: asyncio.Task[object] | None = None
        self.shadow = DmaSnapshot()
        self.shadow.channels[CASCADE_CHANNEL].mode = DMA_MODE_CASCADE
        self.shadow.channels[CASCADE_CHANNEL].masked = False
        self.ff: list[int | None] = [None, None]  #: flip-flop per controller, None = unknown
        self.pending_tc = [0, 0]  #: TC bits read from status but not yet consumed
        self.warned: set[str] = set()


_STATES: weakref.WeakKeyDictionary[Backend, _ControllerState] = weakref.WeakKeyDictionary()


def _residue(channel: int, lsb: int, msb: int) -> int:
    """``get_dma_residue``'s arithmetic on the two count bytes read (docs/reference/linux-isa-dma.md §1.3)."""
    count = (1 + lsb + (msb << 8)) & 0xFFFF
    return count << 1 if channel >= 4 else count


def forget_host_state(backend: Backend) -> None:
    """Forget what was claimed and programmed through :class:`IsaDma` on ``backend``, as if it
    had just been opened (claims, shadow, flip-flop, remembered TC bits), for a runner that
    reuses one backend for several independent scripts. The state object stays the one the
    reset listener already holds; the machine itself is not touched."""
    state = _STATES.get(backend)
    if state is not None:
        if state.lock.locked():
            raise LockError(None, "forget_host_state while the DMA lock is held")
        state.__init__()  # type: ignore[misc]  # reset in place: the reset listener holds this object


class _Claim:
    """``async with claim_dma_lock()``: the lock, owned by the entering task until the block
    ends. A class rather than a generator-based context manager, which costs three times as much
    and is entered once per programming step."""

    __slots__ = ("state",)

    def __init__(self, state: _ControllerState) -> None:
        self.state = state

    async def __aenter__(self) -> None:
        state = self.state
        task = asyncio.current_task()
        if state.owner is not None and state.owner is task:
            raise LockError(None, "claim_dma_lock is not recursive: this task already holds it")
        await state.lock.acquire()
        state.owner = task

    async def __aexit__(self, *exc: object) -> None:
        self.state.owner = None
        self.state.lock.release()


class IsaDma:
    """The Linux ISA DMA API on ``backend``. Methods are coroutines; see module docstring."""

    def __init__(self, backend: Backend, *, unchecked: bool = False, restore_on_reset: bool = True) -> None:
        self.backend = backend
        self.unchecked = unchecked
        state = _STATES.get(backend)
        if state is None:
            state = _STATES[backend] = _ControllerState()
            if restore_on_reset:
                backend.add_reset_listener(self._on_backend_reset)
        self._state = state

    # --- kernel/dma.c -------------------------------------------------------------------
    async def request_dma(self, channel: int, device_id: str) -> None:
        """Claim ``channel`` for ``device_id``. No port I/O (kernel/dma.c)."""
        check_channel(channel, allow_cascade=True)
        owner = self._state.busy.get(channel)
        if owner is not None:
            what = "is the cascade from DMA1" if channel == CASCADE_CHANNEL else "is busy"
            raise ChannelBusyError(channel, f"{what} (claimed by {owner!r}); free_dma it first")
        self._state.busy[channel] = str(device_id)
        log.debug("request_dma", channel=channel, device=device_id)

    async def free_dma(self, channel: int) -> None:
        """Release ``channel``. Like the kernel it does not mask; it warns if still enabled."""
        if type(channel) is not int or not 0 <= channel < MAX_DMA_CHANNELS:
            log.warning("free_dma_invalid", channel=channel, note=f"Trying to free DMA{channel}")
            return
        if channel not in self._state.busy:
            log.warning("free_dma_not_busy", channel=channel, note=f"Trying to free free DMA{channel}")
            return
        if not self._state.shadow.channels[channel].masked and channel != CASCADE_CHANNEL:
            log.warning("free_dma_enabled", channel=channel, note="channel still unmasked: disable_dma first")
        del self._state.busy[channel]

    def proc_dma(self) -> str:
        """``/proc/dma``: one ``"%2d: %s"`` line per claimed channel."""
        return "".join(f"{ch:2d}: {name}\n" for ch, name in sorted(self._state.busy.items()))

    def owner_of(self, channel: int) -> str | None:
        return self._state.busy.get(channel)

    # --- the lock -----------------------------------------------------------------------
    def claim_dma_lock(self) -> AbstractAsyncContextManager[None]:
        """Serialise every user of the controllers on this backend (DMA-ISA-LPC rule 14)."""
        return _Claim(self._state)

    @asynccontextmanager
    async def _locked(self, what: str, *, warn: bool = True) -> AsyncIterator[None]:
        """Hold the DMA lock for one call unless the caller already holds it."""
        if self._holds_lock():
            yield
            return
        self._warn_unlocked(what, warn)
        async with _Claim(self._state):
            yield

    async def _run(self, what: str, ops: Sequence[Op], *, warn: bool = True) -> list[int]:
        """``execute(ops)`` under :meth:`_locked`'s rule, without its generator: a polling wait
        takes the lock once per poll, and a context-manager generator costs more than a status
        read on the simulator (tests/test_dma_driver_paths.py holds the two to the same steps)."""
        if self._holds_lock():
            return await self.backend.execute(ops)  # type: ignore[return-value]  # port I/O only: int results
        self._warn_unlocked(what, warn)
        async with _Claim(self._state):
            return await self.backend.execute(ops)  # type: ignore[return-value]  # as above

    def _holds_lock(self) -> bool:
        owner = self._state.owner
        return owner is not None and owner is asyncio.current_task()

    def _warn_unlocked(self, what: str, warn: bool) -> None:
        state = self._state
        if warn and "nolock" not in state.warned:
            state.warned.add("nolock")
            log.warning("dma_call_without_lock", call=what,
                        note="hold claim_dma_lock() around a programming sequence (DMA-ISA-LPC)")

    # --- checks -------------------------------------------------------------------------
    def _programmable(self, channel: int, unchecked: bool | None) -> bool:
        """Validate a channel-programming call; return whether checks are off.

        Programming an unclaimed channel is allowed, as in Linux; enabling it is not (the rules
        are checked before a channel is unmasked), so a warning here points at the cause early.
        """
        off = self.unchecked if unchecked is None else unchecked
        if off:
            check_channel(channel, allow_cascade=True)
            return True
        check_channel(channel)
        if channel not in self._state.busy and f"unclaimed{channel}" not in self._state.warned:
            self._state.warned.add(f"unclaimed{channel}")
            log.warning("dma_channel_not_requested", channel=channel,
                        note="enable_dma will refuse it: call request_dma first")
        return False

    def _check_ff(self, channel: int, what: str, off: bool) -> None:
        ctrl = _WIRING[channel].index
        ff = self._state.ff[ctrl]
        if ff == 1 and not off:
            raise FlipFlopError(
                channel,
                f"{what}: the byte-pointer flip-flop is set (an odd number of address/count "
                f"accesses since the last clear_dma_ff); the bytes would land swapped",
            )
        if ff is None and f"ff{ctrl}" not in self._state.warned:
            self._state.warned.add(f"ff{ctrl}")
            log.warning("flip_flop_unknown", channel=channel, call=what, note="call clear_dma_ff first")

    def _toggle_ff(self, channel: int, times: int) -> None:
        ctrl = _WIRING[channel].index
        ff = self._state.ff[ctrl]
        self._state.ff[ctrl] = ((ff or 0) + times) & 1 if ff is not None else None

    # --- asm/dma.h: each one program, exactly Linux's traffic --------------------------------
    async def clear_dma_ff(self, channel: int) -> None:
        check_channel(channel, allow_cascade=True)
        await self._run("clear_dma_ff", [_WIRING[channel].clear_ff])
        self._state.ff[_WIRING[channel].index] = 0

    async def set_dma_mode(self, channel: int, mode: int, *, unchecked: bool | None = None) -> None:
        off = self._programmable(channel, unchecked)
        if type(mode) is not int or not 0 <= mode <= 0xFF:
            raise InvalidModeError(channel, f"mode {mode!r} is not a byte (Linux passes a char)")
        if mode & MODE_CHANNEL_MASK and not off:
            raise InvalidModeError(channel, f"mode 0x{mode:02X} has channel bits set; set_dma_mode ORs the channel in")
        if Mode.decode(mode).transfer == TransferType.ILLEGAL and (mode >> 6) != ModeSelect.CASCADE and not off:
            raise InvalidModeError(channel, f"mode 0x{mode:02X}: transfer type 11 is illegal on the 8237")
        value = (mode | (channel & 3)) & 0xFF
        await self._run("set_dma_mode", [_out(_WIRING[channel].ctrl.mode, value)])
        self._state.shadow.channels[channel].mode = value

    def _page_ops(self, channel: int, page: int) -> list[Out]:
        if channel == CASCADE_CHANNEL:
            return []  # Linux has no case for channel 4: no write at all
        value = page & 0xFF
        if channel >= 4:
            value &= 0xFE
        return [_out(PAGE_PORT[channel], value)]

    async def set_dma_page(self, channel: int, page: int, *, unchecked: bool | None = None) -> None:
        self._programmable(channel, unchecked)
        if type(page) is not int:
            raise DmaRuleError(channel, f"page {page!r} is not an integer")
        ops = self._page_ops(channel, page)
        await self._run("set_dma_page", ops)
        if ops:
            self._state.shadow.channels[channel].page = ops[0].value

    def _addr_ops(self, channel: int, phys: int) -> list[Op]:
        port = _WIRING[channel].ports.addr
        word = phys >> 1 if channel >= 4 else phys
        return [*self._page_ops(channel, phys >> 16), _out(port, word & 0xFF), _out(port, (word >> 8) & 0xFF)]

    async def set_dma_addr(self, channel: int, phys: int, *, unchecked: bool | None = None) -> None:
        off = self._programmable(channel, unchecked)
        if type(phys) is not int or phys < 0:
            raise DmaRuleError(channel, f"address {phys!r} is not a physical address")
        self._check_ff(channel, "set_dma_addr", off)
        await self._run("set_dma_addr", self._addr_ops(channel, phys))
        self._toggle_ff(channel, 2)
        self._shadow_addr(channel, phys)

    def _shadow_addr(self, channel: int, phys: int) -> None:
        sh = self._state.shadow.channels[channel]
        if channel != CASCADE_CHANNEL:
            sh.page = (phys >> 16) & (0xFE if channel >= 4 else 0xFF)
        sh.addr_reg = ((phys >> 1) if channel >= 4 else phys) & 0xFFFF
        sh.phys = phys

    def _count_ops(self, channel: int, nbytes: int) -> list[Op]:
        port = _WIRING[channel].ports.count
        c = (nbytes - 1) & 0xFFFFFFFF  # unsigned int: a count of 0 underflows, as in Linux
        if channel >= 4:
            return [_out(port, (c >> 1) & 0xFF), _out(port, (c >> 9) & 0xFF)]
        return [_out(port, c & 0xFF), _out(port, (c >> 8) & 0xFF)]

    async def set_dma_count(self, channel: int, nbytes: int, *, unchecked: bool | None = None) -> None:
        off = self._programmable(channel, unchecked)
        if type(nbytes) is not int or nbytes < 0:
            raise DmaRuleError(channel, f"count {nbytes!r} is not a byte count")
        self._check_ff(channel, "set_dma_count", off)
        await self._run("set_dma_count", self._count_ops(channel, nbytes))
        self._toggle_ff(channel, 2)
        self._shadow_count(channel, nbytes)

    def _shadow_count(self, channel: int, nbytes: int) -> None:
        sh = self._state.shadow.channels[channel]
        c = (nbytes - 1) & 0xFFFFFFFF
        sh.count_reg = ((c >> 1) if channel >= 4 else c) & 0xFFFF
        sh.nbytes = nbytes

    def _mask_op(self, channel: int, masked: bool) -> Out:
        wiring = _WIRING[channel]
        return wiring.mask_set if masked else wiring.mask_clear

    def check_rules(self, channel: int) -> None:
        """Raise the first DMA-ISA-LPC rule the programmed channel breaks."""
        check_channel(channel)
        if channel not in self._state.busy:
            raise ChannelNotRequestedError(channel, "has not been claimed with request_dma")
        sh = self._state.shadow.channels[channel]
        if sh.mode is None:
            raise ChannelNotProgrammedError(channel, "no mode set: call set_dma_mode before enable_dma "
                                            "(bus masters: DMA_MODE_CASCADE)")
        if sh.mode >> 6 == ModeSelect.CASCADE:
            return  # a bus master generates its own addresses
        if sh.phys is None or sh.nbytes is None:
            missing = "address" if sh.phys is None else "count"
            setter = "set_dma_addr" if sh.phys is None else "set_dma_count"
            raise ChannelNotProgrammedError(channel, f"no {missing} set: call {setter} before enable_dma")
        check_buffer(channel, sh.phys, sh.nbytes, decrement=bool(sh.mode & MODE_DECREMENT))

    async def enable_dma(self, channel: int, *, unchecked: bool | None = None) -> None:
        """Unmask ``channel`` once the programmed buffer passes every rule."""
        off = self.unchecked if unchecked is None else unchecked
        check_channel(channel, allow_cascade=off)  # before the try: never mask the cascade
        if not off:
            try:
                self.check_rules(channel)
            except DmaRuleError:
                if not self._state.shadow.channels[channel].masked:
                    await self._run("enable_dma", [self._mask_op(channel, True)])
                    self._state.shadow.channels[channel].masked = True
                raise
        await self._run("enable_dma", [self._mask_op(channel, False)])
        self._state.shadow.channels[channel].masked = False

    async def disable_dma(self, channel: int, *, unchecked: bool | None = None) -> None:
        off = self.unchecked if unchecked is None else unchecked
        check_channel(channel, allow_cascade=off)
        await self._run("disable_dma", [self._mask_op(channel, True)])
        self._state.shadow.channels[channel].masked = True

    async def get_dma_residue(self, channel: int) -> int:
        """Bytes not yet transferred, with the kernel's arithmetic: ``unsigned short``
        ``1 + lsb + (msb << 8)`` (0xFFFF after TC wraps to 0), doubled on channels 5-7."""
        check_channel(channel, allow_cascade=True)
        self._check_ff(channel, "get_dma_residue", self.unchecked)
        read = _WIRING[channel].count_read
        lsb, msb = await self._run("get_dma_residue", [read, read])
        self._toggle_ff(channel, 2)
        return _residue(channel, lsb, msb)

    # --- extensions ---------------------------------------------------------------------
    async def set_dma_command(self, ctrl: Ctrl, value: int) -> None:
        """Write a controller's command register (not in Linux; shadowed for resume)."""
        if type(value) is not int or not 0 <= value <= 0xFF:
            raise DmaRuleError(None, f"command {value!r} is not a byte")
        ports = CONTROLLERS[ctrl]
        await self._run("set_dma_command", [Out(ports.command, value)])
        self._state.shadow.command[int(ctrl)] = value

    async def program(self, channel: int, mode: int, phys: int, nbytes: int, *, enable: bool = True) -> None:
        """``snd_dma_program``: disable, clear FF, mode, addr, count, enable — one round trip.

        Every rule is checked before any port is touched.
        """
        self._programmable(channel, None)
        if enable and not self.unchecked and channel not in self._state.busy:
            raise ChannelNotRequestedError(channel, "has not been claimed with request_dma")
        if type(mode) is not int or not 0 <= mode <= 0xFF or mode & MODE_CHANNEL_MASK:
            raise InvalidModeError(channel, f"mode {mode!r} must be a byte without channel bits")
        if mode >> 6 != _CASCADE_SELECT and not self.unchecked:
            check_buffer(channel, phys, nbytes, decrement=bool(mode & MODE_DECREMENT))
        wiring = _WIRING[channel]
        value = mode | (channel & 3)
        ops: list[Op] = [wiring.mask_set, wiring.clear_ff, _out(wiring.ctrl.mode, value)]
        ops += self._addr_ops(channel, phys)
        ops += self._count_ops(channel, nbytes)
        if enable:
            ops.append(wiring.mask_clear)
        owner = self._state.owner
        if owner is not None and owner is asyncio.current_task():  # self._run's fast case, one await less
            await self.backend.execute(ops)
        else:
            await self._run("program", ops)
        sh = self._state.shadow.channels[channel]
        sh.mode = value
        self._shadow_addr(channel, phys)
        self._shadow_count(channel, nbytes)
        sh.masked = not enable
        self._state.ff[wiring.index] = 0

    async def read_status(self, ctrl: Ctrl) -> int:
        """Read a status register, remembering TC bits so no other waiter loses them."""
        status = (await self._run("read_status", _STATUS_READ[ctrl], warn=False))[0]
        self._state.pending_tc[int(ctrl)] |= status & 0x0F
        return status

    def _take_tc(self, channel: int) -> bool:
        ctrl, bit = int(channel >= 4), 1 << (channel & 3)
        if self._state.pending_tc[ctrl] & bit:
            self._state.pending_tc[ctrl] &= ~bit
            return True
        return False

    async def wait_dma_done(
        self, channel: int, timeout: float = 1.0, *, poll_us: float = 100.0, check: bool = True
    ) -> TransferResult:
        """Wait for terminal count on ``channel``, then disable it and read the residue.

        DMA-ISA-LPC: "when the transfer completes or times out, disable the channel and check
        get_dma_residue()". With ``check`` an incomplete transfer raises
        :class:`~hil.errors.TransferIncompleteError` carrying the residue. On virtual-time
        backends the timeout is virtual time.

        Each poll is :meth:`read_status` (its own program, under the lock, so the TC bits it
        clears are kept for every waiter), then a delay outside the lock. The closing
        ``disable_dma``, ``clear_dma_ff``, ``get_dma_residue`` (no ``disable_dma`` under
        autoinit) are one locked sequence, as parport_pc's (docs/reference/linux-isa-dma.md
        §2(c)), sent as one program: the same writes and reads in the same order, one round trip.
        """
        check_channel(channel)
        state = self._state
        sh = state.shadow.channels[channel]
        expected = sh.nbytes or 0
        autoinit = bool(sh.mode is not None and sh.mode & DMA_AUTOINIT)
        virtual = Capability.VIRTUAL_TIME in self.backend.capabilities
        loop = asyncio.get_running_loop()
        start, waited = loop.time(), 0.0
        ctrl = int(channel >= 4)  # Ctrl.DMA2 for channels 4-7, as an index
        status_read, bit = _STATUS_READ[ctrl], 1 << (channel & 3)
        delay = self.backend.delay
        tc = False
        interval = poll_us  # doubles up to 1/16 of the timeout: quick for short transfers, and
        longest = max(poll_us, timeout * 1e6 / 16)  # a long one costs few status reads
        while True:
            status = (await self._run("read_status", status_read, warn=False))[0]  # read_status, inlined
            pending = state.pending_tc
            if (pending[ctrl] | status) & bit:  # _take_tc, inlined
                pending[ctrl] = (pending[ctrl] | status & 0x0F) & ~bit
                tc = True
                break
            pending[ctrl] |= status & 0x0F
            elapsed = waited if virtual else loop.time() - start
            if elapsed >= timeout:
                break
            step = min(interval, max(0.0, (timeout - elapsed) * 1e6))
            await delay(step)
            waited += step / 1e6
            interval = min(interval * 2, longest)
        wiring = _WIRING[channel]
        read = wiring.count_read
        closing: list[Op] = [wiring.clear_ff, read, read] if autoinit else [wiring.mask_set, wiring.clear_ff, read, read]
        lsb, msb = await self._run("wait_dma_done", closing, warn=False)
        if not autoinit:
            state.shadow.channels[channel].masked = True  # disable_dma's record (the shadow a reset restored, too)
        state.ff[wiring.index] = 0  # cleared, then two count reads
        residue = _residue(channel, lsb, msb)
        elapsed = waited if virtual else loop.time() - start
        result = TransferResult(channel, tc, 0 if autoinit and tc else residue, expected, elapsed)
        log.debug("dma_done", channel=channel, tc=tc, residue=result.residue, expected=expected)
        if check and not result.complete:
            raise TransferIncompleteError(channel, residue, expected, timeout)
        return result

    # --- suspend / resume ---------------------------------------------------------------
    async def suspend(self) -> DmaSnapshot:
        """Capture the shadow and mask every channel this backend's users own.

        A transfer still running is recorded (its residue) and logged: DMA-ISA-LPC requires
        the driver to prevent suspend mid-transfer, and the 8237 cannot resume one.
        """
        async with self._locked("suspend", warn=False):
            snap = copy.deepcopy(self._state.shadow)
            owned = [ch for ch in sorted(self._state.busy) if ch != CASCADE_CHANNEL]
            ops: list[Op] = []
            for ch in owned:
                if not snap.channels[ch].masked:
                    ops.append(self._mask_op(ch, True))
            if ops:
                await self.backend.execute(ops)
            for ch in owned:
                self._state.shadow.channels[ch].masked = True
                if not snap.channels[ch].masked and snap.channels[ch].mode is not None:
                    await self.clear_dma_ff(ch)
                    residue = await self.get_dma_residue(ch)
                    snap.residues[ch] = residue
                    if residue and not (snap.channels[ch].mode or 0) & DMA_AUTOINIT:
                        log.warning("suspend_mid_transfer", channel=ch, residue=residue,
                                    note="the transfer will restart from its base on resume")
        log.info("dma_suspended", owned=owned)
        return snap

    def _restore_ops(self, snap: DmaSnapshot) -> list[Op]:
        ops: list[Op] = []
        for ports in CONTROLLERS:
            ops.append(Out(ports.master_clear, 0))  # FF cleared, all masked (docs/reference/8237.md §2.10)
        for ctrl, ports in enumerate(CONTROLLERS):
            ops.append(Out(ports.command, snap.command[ctrl]))
        ops.append(Out(DMA2.mode, DMA_MODE_CASCADE))  # the BIOS's job, lost on a real reset
        for ch in range(8):
            sh = snap.channels[ch]
            if ch == CASCADE_CHANNEL:
                continue
            cp = channel_ports(ch)
            if sh.mode is not None:
                ops.append(Out(cp.ctrl.mode, sh.mode))
            if sh.page is not None:
                ops.append(Out(cp.page, sh.page))
            if sh.addr_reg is not None:
                ops += [Out(cp.addr, sh.addr_reg & 0xFF), Out(cp.addr, sh.addr_reg >> 8)]
            if sh.count_reg is not None:
                ops += [Out(cp.count, sh.count_reg & 0xFF), Out(cp.count, sh.count_reg >> 8)]
        ops.append(self._mask_op(CASCADE_CHANNEL, False))  # "channel 0-3 won't work" otherwise
        for ch in range(8):
            if ch != CASCADE_CHANNEL and not snap.channels[ch].masked:
                ops.append(self._mask_op(ch, False))
        return ops

    async def resume(self, snapshot: DmaSnapshot | None = None) -> None:
        """Rewrite command, modes, pages, base address/count and masks from ``snapshot``
        (default: the live shadow), as one program, so every readable register reads back
        as programmed. Each master clear leaves the flip-flop clear for the pairs that follow.
        """
        snap = copy.deepcopy(snapshot if snapshot is not None else self._state.shadow)
        async with self._locked("resume", warn=False):
            await self.backend.execute(self._restore_ops(snap))
            self._state.shadow = snap
            self._state.ff = [0, 0]
            self._state.pending_tc = [0, 0]
        log.info("dma_resumed", enabled=[ch for ch in range(8) if not snap.channels[ch].masked])

    async def _on_backend_reset(self, backend: Backend) -> None:
        log.warning("dma_restore_after_reset", backend=backend.url)
        await self.resume()

    def shadow(self) -> DmaSnapshot:
        return copy.deepcopy(self._state.shadow)
