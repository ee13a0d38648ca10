"""glibc's malloc thresholds fixed before a TCP floor is timed.

Why: an asyncio streams connection receives with ``recv(256 KiB)``, and whether glibc serves that
buffer from the heap or with an ``mmap`` and ``munmap`` per read (fresh pages faulted in each
time) depends on the process's allocation history: glibc raises its mmap threshold only after it
has freed one mmapped block. The same echo then costs 25 us in one process and 61 us in the next
(docs/reference/hil-lessons.md §1.14). A floor that may be 2.4 times its own best is no floor, so
before timing one we fix the thresholds where glibc's own adjustment would put them after one
such buffer: the mmap threshold above it, the trim threshold twice that. hil's own streams
receive into a buffer of their own (:mod:`hil.streams`) and do not depend on either regime.
"""

from __future__ import annotations

import ctypes

from hil.records import dataclass

M_TRIM_THRESHOLD = -1  #: <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20  #: above asyncio's 256 KiB receive buffer
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  #: what glibc pairs with a raised mmap threshold (mallopt(3))


@dataclass(frozen=True, slots=True)
class HeapPin:
    """Whether the thresholds were fixed, and the words a floor's description carries."""

    pinned: bool
    detail: str


def pin_malloc_thresholds() -> HeapPin:
    """Fix glibc's mmap and trim thresholds for the rest of the process (a benchmark's own);
    elsewhere (another C library) change nothing and say so."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        version = libc.gnu_get_libc_version().decode()
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return HeapPin(False, "malloc thresholds as they are (not glibc)")
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 or mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return HeapPin(False, f"malloc thresholds as they are (glibc {version} refused mallopt)")
    return HeapPin(True, f"glibc {version} malloc thresholds fixed: mmap {MMAP_THRESHOLD >> 10} KiB, "
                         f"trim {TRIM_THRESHOLD >> 10} KiB")
