"""Holding a CPU latency request while a link is timed (docs/reference/hil-lessons.md §1.13):
the open-write-keep-open sequence of Linux's CPU latency QoS, and an honest report where it
cannot be held. A regular file stands in for /dev/cpu_dma_latency: it records the write and
whether the descriptor was closed afterwards."""

from __future__ import annotations

import os
import struct
from pathlib import Path

from hil.bench.cpulatency import hold_cpu_latency


def _open_fds() -> set[str]:
    return {os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")}


def test_the_request_is_one_32_bit_write_held_while_the_block_runs(tmp_path: Path) -> None:
    device = tmp_path / "cpu_dma_latency"
    device.write_bytes(b"")
    with hold_cpu_latency(0, str(device)) as cpu:
        assert cpu.held and "held at 0 us" in cpu.detail
        assert str(device) in _open_fds()  # the request lasts as long as the descriptor is open
        assert device.read_bytes() == struct.pack("=i", 0)
    assert str(device) not in _open_fds()  # closed: the request is dropped
    with hold_cpu_latency(20, str(device)):
        pass
    assert device.read_bytes()[-4:] == struct.pack("=i", 20)


def test_a_device_that_cannot_be_opened_is_reported_not_raised(tmp_path: Path) -> None:
    missing = tmp_path / "none"
    with hold_cpu_latency(0, str(missing)) as cpu:
        assert not cpu.held
        assert cpu.detail.startswith("CPU idle states as they are") and str(missing) in cpu.detail
    assert not missing.exists()  # nothing was created in its place


def test_a_refused_write_is_reported_and_the_descriptor_closed(tmp_path: Path) -> None:
    full = "/dev/full"  # every write fails with ENOSPC: a device that refuses the value
    with hold_cpu_latency(0, full) as cpu:
        assert not cpu.held and "refused 0" in cpu.detail
    assert full not in _open_fds()
