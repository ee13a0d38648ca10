"""``qemu:`` backend: QEMU's emulated PC (``-machine pc``) driven over the qtest socket.

QEMU's i8257 (its 8237), floppy controller and Sound Blaster 16 were written by other people
and already move real bytes by DMA, which makes QEMU an independent reference to run the same
transfer scripts against (docs/reference/qemu-qtest.md). The backend starts ``qemu-system-x86_64`` itself,
listening first on a unix socket in a private directory that QEMU then connects to; it speaks
qtest over it, and stops the process it started on close, on error and when the interpreter
exits, even by a signal (the child gets ``PR_SET_PDEATHSIG``). QEMU runs in a session and
process group of its own, and the whole group is stopped, so that a ``binary=`` wrapper that
runs QEMU as its child instead of ``exec``-ing it does not leave QEMU behind.

Debian's QEMU 7.2 has no qtest accelerator (docs/reference/qemu-qtest.md §1), so a real vCPU exists. It is
kept away from the hardware by a 64 KiB firmware this module writes itself (``cli; hlt; jmp``
at the reset vector: ``cpu=halt``, the default, with the virtual clock running in real time so
that timer-driven devices such as the SB16 play), or by never starting it (``cpu=stopped``, ``-S``,
clock frozen). Either way every DMA, page and device register is in its reset state until the
client programs it.

URL options (``qemu:?floppy=generate&sb16=1``):

========== ==================================================================================
``binary`` path of ``qemu-system-x86_64`` (default ``$HIL_QEMU_BINARY``, else the one on PATH)
``mem``    guest RAM, ``16M`` (default) .. ``2G``
``cpu``    ``halt`` (default) or ``stopped``
``floppy`` ``generate`` (a 1.44 MB image where byte *i* of LBA *n* is ``(13n + i) & 0xFF``,
           in the private directory) or the path of a raw image (attached read-write)
``sb16``   ``1``: add a Sound Blaster 16 (220h, IRQ 5, DMA 1 and 5, silent audio backend)
``allow``  more ports for the allow-list, e.g. ``0x3F0-0x3F7,0x220-0x22F``
``args``   more QEMU arguments, shell-quoted (``-icount shift=0,sleep=off``); see :data:`REFUSED_ARGS`
``timeout`` seconds to wait for QEMU to connect (default 10)
``log``    file for QEMU's stdout and stderr (default: in the private directory)
``wide``   ``refuse`` (default) or ``pass``: 16-bit accesses to the DMA and page ports
========== ==================================================================================

Only the DMA controllers and page registers are reachable by default; ``floppy`` adds the FDC
ports (0x3F0-0x3F7), ``sb16`` the SB16's (0x220-0x22F), ``allow`` anything else. Ports that reset
or stop the emulated machine (0x64, 0x92, 0xCF9) are refused whatever the allow-list says.
Port accesses to the DMA and page ports are byte-wide only unless ``wide=pass``: QEMU hands a
word access at an even port to the owner of that port (docs/reference/qemu-qtest.md §3.5) and splits one at an
odd port, which no 8-bit register file on an ISA bus does. ``wide=pass`` exists to check a model
of exactly that dispatch (the simulator's ``qemu`` profile) against QEMU.

The backend is split by job:

* :mod:`~hil.backends.qemu.process`: finding QEMU and its version, the process group it runs
  in, the private directories, and which QEMU arguments ``args=`` may add;
* :mod:`~hil.backends.qemu.firmware`: the files the backend makes (halt firmware, floppy image);
* :mod:`~hil.backends.qemu.config`: the URL options as a :class:`QemuConfig`;
* :mod:`~hil.backends.qemu.translate`: a program checked and translated into qtest commands;
* :mod:`~hil.backends.qemu.settle`: waiting for DMA to stop, and for IRQ lines;
* :mod:`~hil.backends.qemu.backend`: :class:`QemuBackend`, which starts, owns and stops QEMU.
"""

from hil.backends.qemu.backend import QemuBackend, from_url
from hil.backends.qemu.config import FDC_PORTS, SB16_PORTS, QemuConfig
from hil.backends.qemu.firmware import FLOPPY_SECTORS, SECTOR, floppy_image, floppy_sector, halt_firmware
from hil.backends.qemu.process import (
    BINARY_ENV,
    DEFAULT_BINARY,
    INSTALL_HINT,
    MIN_VERSION,
    REFUSED_ARGS,
    QemuNotFoundError,
    QemuStartError,
    QemuVersionError,
    check_args,
    find_binary,
    probe_version,
    qemu_available,
    qemu_version,
)
from hil.backends.qtest import QemuExitedError, QtestError

__all__ = [
    "BINARY_ENV",
    "DEFAULT_BINARY",
    "FDC_PORTS",
    "FLOPPY_SECTORS",
    "INSTALL_HINT",
    "MIN_VERSION",
    "REFUSED_ARGS",
    "SB16_PORTS",
    "SECTOR",
    "QemuBackend",
    "QemuConfig",
    "QemuExitedError",
    "QemuNotFoundError",
    "QemuStartError",
    "QemuVersionError",
    "QtestError",
    "check_args",
    "find_binary",
    "floppy_image",
    "floppy_sector",
    "from_url",
    "halt_firmware",
    "probe_version",
    "qemu_available",
    "qemu_version",
]
