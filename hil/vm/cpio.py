"""The ``newc`` cpio archive the Linux kernel unpacks as its initramfs.

The kernel's initramfs unpacker reads only the "new ASCII" format (magic ``070701``), each entry
a 110-byte header of hexadecimal fields, the name, and the data, both padded to 4 bytes, ending
with an entry named ``TRAILER!!!`` (docs/reference/vm.md §2). Written here rather than by
``cpio(1)`` so that building a guest needs nothing the host may lack, and so that the archive is
reproducible: owners, times and inode numbers are fixed, entries sorted, so the same inputs give
the same bytes and the image cache can key on them.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable

from hil.records import dataclass

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


@dataclass(frozen=True, slots=True)
class Entry:
    """One archive member: a directory, a regular file, a symbolic link or a character device."""

    name: str  #: path inside the archive, without a leading slash
    mode: int  #: st_mode: type bits and permissions
    data: bytes = b""  #: file contents, or the target of a symbolic link
    rdev: tuple[int, int] = (0, 0)  #: (major, minor) of a device node

    @classmethod
    def directory(cls, name: str, perm: int = 0o755) -> Entry:
        return cls(name, stat.S_IFDIR | perm)

    @classmethod
    def file(cls, name: str, data: bytes, perm: int = 0o644) -> Entry:
        return cls(name, stat.S_IFREG | perm, data)

    @classmethod
    def symlink(cls, name: str, target: str) -> Entry:
        return cls(name, stat.S_IFLNK | 0o777, target.encode())

    @classmethod
    def chardev(cls, name: str, major: int, minor: int, perm: int = 0o600) -> Entry:
        return cls(name, stat.S_IFCHR | perm, rdev=(major, minor))


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(ino: int, entry: Entry, name: bytes) -> bytes:
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (ino, entry.mode, 0, 0, nlink, 0, len(entry.data), 0, 0, entry.rdev[0], entry.rdev[1], len(name) + 1, 0)
    return MAGIC + b"".join(b"%08X" % f for f in fields)


def archive(entries: Iterable[Entry]) -> bytes:
    """The archive of ``entries``, parents before children (sorted by path), each once."""
    seen: dict[str, Entry] = {}
    for entry in entries:
        name = entry.name.strip("/")
        if not name:
            raise ValueError("cpio entry with an empty name")
        seen[name] = Entry(name, entry.mode, entry.data, entry.rdev)
    out = bytearray()
    for ino, name in enumerate(sorted(seen), start=1):
        entry = seen[name]
        encoded = name.encode()
        header = _header(ino, entry, encoded)
        out += header + encoded + b"\0" + _pad(len(header) + len(encoded) + 1)
        out += entry.data + _pad(len(entry.data))
    trailer = TRAILER.encode()
    header = _header(0, Entry(TRAILER, 0), trailer)
    out += header + trailer + b"\0" + _pad(len(header) + len(trailer) + 1)
    return bytes(out)


def members(data: bytes) -> list[Entry]:
    """Read an archive back (tests, and ``hil vm image --list``): the entries before the trailer."""
    out: list[Entry] = []
    pos = 0
    while True:
        if data[pos:pos + 6] != MAGIC:
            raise ValueError(f"cpio: bad magic at offset {pos}")
        fields = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rmaj, rmin, namesize = fields[1], fields[6], fields[9], fields[10], fields[11]
        name_at = pos + 110
        name = data[name_at:name_at + namesize - 1].decode()
        data_at = name_at + namesize + (-(110 + namesize) % 4)
        if name == TRAILER:
            return out
        out.append(Entry(name, mode, data[data_at:data_at + size], (rmaj, rmin)))
        pos = data_at + size + (-size % 4)
