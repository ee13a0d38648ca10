"""The model's physical memory: zero-filled, and paid for only where something touches it.

A ``bytearray(16 MiB)`` writes every byte before the machine exists, a few milliseconds per
backend open, though a typical script touches a few pages of it. An anonymous private mapping
(``mmap`` with no file) reads as zeros and costs nothing until a page is touched: the kernel
then maps its shared zero page (a read) or a fresh zeroed page (a write). It is memory, not I/O:
no file, no device and no descriptor are behind it, so the simulator stays without I/O. Private,
so a forked process gets its own copy on write rather than sharing the model's memory.

Every access the model makes works on it as on a ``bytearray`` of the same length: indexing,
slices (which return ``bytes``), equal-length slice assignment, ``memoryview``, ``len`` and the
buffer protocol (hashing, ``bytes()``). It never changes length: a slice assignment of another
length raises, where a ``bytearray`` would silently grow or shrink the memory, so every writer
clips its span to ``len(memory)`` first (the machine warns about the cycles it drops).
"""

from __future__ import annotations

import mmap

#: what :attr:`hil.sim.machine.Machine.memory` holds (a ``bytearray`` only for an empty memory,
#: which no mapping can be)
Memory = mmap.mmap | bytearray


def zeroed(size: int) -> Memory:
    """``size`` zero bytes, allocated as they are first touched; refuses a negative size as
    ``bytearray`` does."""
    if size <= 0:
        return bytearray(size)  # an empty memory; a negative size raises ValueError here
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
