"""The DMA-ISA-LPC buffer rules, stated once (docs/reference/linux-isa-dma.md §3, docs/reference/8237.md §3.3, §3.6, §3.7).

Both the driver layer (:mod:`hil.dma`, before a channel is enabled) and the DMA zone allocator
(:mod:`hil.buffers`, when it places a buffer) ask this module, so the two can never disagree.
"""

from __future__ import annotations

from hil.errors import (
    AddressLimitError,
    AlignmentError,
    BoundaryCrossingError,
    CascadeChannelError,
    InvalidChannelError,
    TransferLengthError,
)
from hil.ports import CASCADE_CHANNEL, DMA_LIMIT
from hil.records import dataclass


@dataclass(frozen=True, slots=True)
class ChannelRules:
    channel: int
    width: int  #: transfer unit in bits: 8 on channels 0-3, 16 on 5-7
    boundary: int  #: a transfer may not cross a multiple of this (64 KiB / 128 KiB)
    max_length: int  #: bytes per programming: 64K units
    align: int  #: address and length multiple: 1 or 2 bytes

    def crosses(self, phys: int, length: int) -> bool:
        return length > 0 and phys // self.boundary != (phys + length - 1) // self.boundary


def check_channel(channel: object, *, allow_cascade: bool = False) -> int:
    """Channel numbers are 0-7; 4 is the cascade and never carries data."""
    if type(channel) is not int or not 0 <= channel <= 7:
        raise InvalidChannelError(None, f"channel {channel!r} does not exist: ISA DMA has channels 0-7")
    if channel == CASCADE_CHANNEL and not allow_cascade:
        raise CascadeChannelError(
            channel, "channel 4 cascades DMA1 into DMA2 and cannot be programmed for transfers"
        )
    return channel


def rules_for(channel: int) -> ChannelRules:
    return _RULES[check_channel(channel)]


#: each channel's rules, made once (they are immutable; every programming call asks)
_RULES = {ch: ChannelRules(ch, 16, 0x20000, 0x20000, 2) if ch >= 4 else ChannelRules(ch, 8, 0x10000, 0x10000, 1)
          for ch in range(8) if ch != CASCADE_CHANNEL}


def transfer_span(channel: int, phys: int, length: int, *, decrement: bool = False) -> tuple[int, int]:
    """The bytes ``[low, high)`` a transfer touches. In decrement mode ``phys`` is the first
    (highest) unit and the transfer runs downwards from it (docs/reference/8237.md §3.3)."""
    if not decrement:
        return phys, phys + length
    unit = 2 if channel >= 4 else 1
    return phys + unit - length, phys + unit


def check_buffer(channel: int, phys: int, length: int, *, decrement: bool = False) -> ChannelRules:
    """Raise the specific :class:`~hil.errors.DmaRuleError` for the first rule broken."""
    r = rules_for(channel)
    if type(phys) is not int or phys < 0:
        raise AddressLimitError(channel, f"address {phys!r} is not a physical address")
    if type(length) is not int or not 1 <= length <= r.max_length:
        raise TransferLengthError(
            channel,
            f"length {length!r} bytes is outside 1..{r.max_length} "
            f"({'64K words' if r.width == 16 else '64K bytes'} per programming)",
        )
    start = phys
    if decrement:
        low, _ = transfer_span(channel, phys, length, decrement=True)
        if low < 0:
            raise AddressLimitError(channel, f"decrementing {length} bytes from 0x{phys:X} runs below address 0")
        phys = low  # the checks below are about the bytes touched, whichever way they are walked
    if phys + length > DMA_LIMIT:
        raise AddressLimitError(
            channel,
            f"buffer 0x{phys:X}..0x{phys + length - 1:X} is not entirely below 16 MiB "
            f"(ISA DMA generates 24-bit addresses)",
        )
    if r.align > 1 and (start % r.align or length % r.align):
        what = f"address 0x{start:X}" if start % r.align else f"length {length}"
        raise AlignmentError(channel, f"{what} is odd: 16-bit channels need an even address and length")
    if r.crosses(phys, length):
        kib = r.boundary >> 10
        edge = (phys // r.boundary + 1) * r.boundary
        walk = " (decrementing)" if decrement else ""
        raise BoundaryCrossingError(
            channel,
            f"buffer 0x{phys:X}..0x{phys + length - 1:X}{walk} crosses the {kib} KiB boundary at 0x{edge:X} "
            f"(the page register does not count: the address would wrap inside the page)",
        )
    return r

