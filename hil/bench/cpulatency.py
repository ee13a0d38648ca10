"""Keeping the CPUs out of deep idle states while a link is timed: Linux's CPU latency QoS.

Why: a round trip that waits a millisecond for a reply lets the host CPU fall into an idle
state, and waking it again is counted as link time although neither the protocol nor the line
spent it (docs/reference/hil-lessons.md §1.13). Latency benchmarks hold a CPU latency request
while they measure; ``hil bench link`` does too, where it may, and reports whether it did, so a
figure says what it was measured under.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator

from hil.oserrors import file_reason
from hil.records import dataclass

DEVICE = "/dev/cpu_dma_latency"


@dataclass(frozen=True, slots=True)
class CpuLatency:
    """What a measurement ran under: whether the request was held, and the line to print."""

    held: bool
    detail: str


@contextlib.contextmanager
def hold_cpu_latency(limit_us: int = 0, device: str = DEVICE) -> Iterator[CpuLatency]:
    """Hold a CPU latency request of ``limit_us`` for the ``with`` block (a small write to a
    character device, done before the timed part starts); where the device is missing or not
    writable, measure as the CPUs are and say so."""
    fd: int | None = None
    failure = None
    try:
        fd = os.open(device, os.O_WRONLY | os.O_CLOEXEC)
        os.write(fd, struct.pack("=i", limit_us))
    except OSError as e:
        failure = f"{device} {'refused ' + str(limit_us) if fd is not None else 'cannot be opened'}: {file_reason(e)}"
        if fd is not None:
            os.close(fd)
    if failure is not None or fd is None:
        yield CpuLatency(False, f"CPU idle states as they are ({failure})")
        return
    try:
        yield CpuLatency(True, f"CPU wake-up latency held at {limit_us} us ({device})")
    finally:
        os.close(fd)
