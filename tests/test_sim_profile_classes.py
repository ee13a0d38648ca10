"""A simulator profile is a pair of classes: the controller model and the machine that wires it.

The datasheet model keeps per channel what docs/reference/8237.md §6 lists ('State per
controller': base and current address and count, mode); QEMU's keeps what its i8257 keeps
(docs/reference/qemu-qtest.md §8 'writing the high byte of address or count': base registers
and a transfer position). Each channel is its own struct, so programming one channel touches
no other; the machine of each profile is its own class, built by name.
"""

from __future__ import annotations

import pytest

from hil.ports import DMA1, DMA2, channel_ports
from hil.sim.i8237 import I8237, Channel, QemuChannel, QemuI8257
from hil.sim.machine import MACHINES, PROFILES, Machine, QemuMachine, machine_for

PAIRS = {"intel": (Machine, I8237, Channel), "qemu": (QemuMachine, QemuI8257, QemuChannel)}


@pytest.mark.parametrize("profile", PROFILES)
def test_profile_builds_its_classes(profile):
    """machine_for(profile) gives that profile's machine, two controllers of its model and one
    struct per channel, none shared between channels or controllers."""
    machine_cls, ctl_cls, chan_cls = PAIRS[profile]
    m = machine_for(profile, mem_size=1 << 20)
    assert type(m) is machine_cls and MACHINES[profile] is machine_cls and m.profile == profile
    assert type(m.dma1) is ctl_cls and type(m.dma2) is ctl_cls
    chans = [*m.dma1.channels, *m.dma2.channels]
    assert [type(c) for c in chans] == [chan_cls] * 8
    assert len({id(c) for c in chans}) == 8
    m.reset()
    assert type(m.dma1) is ctl_cls and [type(c) for c in m.dma2.channels] == [chan_cls] * 4


def test_unknown_profile_is_refused_by_name():
    with pytest.raises(ValueError, match=r"unknown profile 'pdp11'; profiles: intel, qemu"):
        machine_for("pdp11")


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("channel", [1, 2, 5, 7])
def test_programming_one_channel_touches_only_its_struct(profile, channel):
    """docs/reference/8237.md §2.2: address and count are per channel; the write lands in that
    channel's struct (base registers on both models) and leaves the seven others at reset."""
    m = machine_for(profile)
    ctrl = DMA2 if channel >= 4 else DMA1
    ports = channel_ports(channel)
    m.io_write(ctrl.clear_ff, 0)
    for port, word in ((ports.addr, 0x1234), (ports.count, 0x0056)):
        m.io_write(port, word & 0xFF)
        m.io_write(port, word >> 8)
    ctl = m.dma2 if channel >= 4 else m.dma1
    mine = ctl.channels[channel & 3]
    assert (mine.base_addr, mine.base_count) == (0x1234, 0x0056)
    assert ctl.current(channel & 3) == (0x1234, 0x0056)
    others = [c for c in (*m.dma1.channels, *m.dma2.channels) if c is not mine]
    fresh = PAIRS[profile][2]()
    assert all((c.base_addr, c.base_count) == (fresh.base_addr, fresh.base_count) for c in others)


def test_qemu_channel_restarts_on_a_high_byte():
    """docs/reference/qemu-qtest.md §8 'writing the high byte of address or count': QEMU's
    channel struct keeps a start address and a position, and a high-byte write restarts it."""
    m = machine_for("qemu")
    ch = m.dma1.channels[2]
    assert isinstance(ch, QemuChannel)
    ch.pos = 7
    m.io_write(DMA1.clear_ff, 0)
    m.io_write(channel_ports(2).addr, 0x00)
    assert ch.pos == 7  # a low byte alone does not restart the channel
    m.io_write(channel_ports(2).addr, 0x30)
    assert (ch.now_addr, ch.pos) == (0x3000, 0)
